"""Dense bit packing: n codes of b bits each take exactly ceil(n * b / 8) bytes.

Code i occupies bits [i*b, (i+1)*b) of the little-endian bit stream, so two 4-bit codes
share a byte (low nibble first) and eight 3-bit codes share three bytes. Unpacking is the
exact inverse: `unpack_bits(pack_bits(c, b), b, c.numel())` equals `c` bit for bit.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes: bits must be one of 1..8")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2^bits) (any shape, read row-major) into a 1-D uint8 tensor."""
    _check_bits(bits)
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits}) to pack into {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8)
    if 8 % bits == 0:  # 1, 2, 4: whole codes per byte, no code straddles a byte
        per_byte = 8 // bits
        padded = torch.zeros(-(-flat.numel() // per_byte) * per_byte, dtype=torch.int32)
        padded[: flat.numel()] = flat
        shifts = torch.arange(per_byte, dtype=torch.int32) * bits
        return (padded.view(-1, per_byte) << shifts).sum(dim=1).to(torch.uint8)
    # 3, 5, 6, 7: go through the bit stream.
    bit_index = torch.arange(bits, dtype=torch.int32)
    stream = ((flat.unsqueeze(1) >> bit_index) & 1).reshape(-1)
    padded = torch.zeros(packed_nbytes(flat.numel(), bits) * 8, dtype=torch.int32)
    padded[: stream.numel()] = stream
    weights = 1 << torch.arange(8, dtype=torch.int32)
    return (padded.view(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first `count` codes of a packed stream, as a 1-D uint8 tensor."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.ndim != 1:
        raise ValueError("packed codes must be a 1-D uint8 tensor")
    if packed.numel() != packed_nbytes(count, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold exactly {count} {bits}-bit codes "
                         f"(expected {packed_nbytes(count, bits)})")
    data = packed.to(torch.int32)
    if bits == 8:
        return packed.clone()
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = torch.arange(per_byte, dtype=torch.int32) * bits
        codes = (data.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(-1)[:count].to(torch.uint8)
    stream = ((data.unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)
    stream = stream[: count * bits].view(count, bits)
    return (stream << torch.arange(bits, dtype=torch.int32)).sum(dim=1).to(torch.uint8)
