"""A tied embedding table quantized at export, stored once: the token lookup reads the rows
of the LM head's own MatMulNBits tensors, instead of a second copy for GatherBlockQuantized.

MatMulNBits keeps a weight [N, K] (here the table [vocab, hidden]) as

    B            [N, K / block, block * bits / 8] uint8   codes, low nibble first (4-bit)
    scales       [N * K / block] float32
    zero_points  [N * ceil((K / block) * bits / 8)] uint8   packed the same way per row

so row r of the table is scale[r, j] * (code[r, j, i] - zero[r, j]) over blocks j. The
lookup gathers the token rows of B (axis 0: no reshape of the big tensor), unpacks the
nibbles with BitwiseAnd / BitShift, and gathers the same rows of the (small) scales and
zero points reshaped to [N, ...]; the arithmetic is GatherBlockQuantized's, so the values
are the same float32 numbers. It runs on the T tokens of a call only; the codes saved
are vocab x hidden x bits / 8 bytes (14 MB on SmolLM2-135M at 4 bits, 197 MB on Llama
3.2 3B's 128256 x 3072 table).
"""

from __future__ import annotations

import numpy as np

UINT8, FLOAT = 2, 1  # onnx TensorProto element types
SHARED_BITS = (4, 8)


def shared_lookup(g, ids: str, prefix: str, rows: int, width: int, bits: int,
                  block: int, has_zero_points: bool) -> str:
    """The float32 rows [T, width] of the table whose MatMulNBits tensors are named
    `prefix`.B / .scales / .zero_points (export.onnx.weights.matmul_nbits), for `ids`."""
    blocks = width // block
    codes = g.op("Gather", [f"{prefix}.B", ids], "table_codes", axis=0)  # [T, nb, bytes]
    values = _unpacked(g, codes, bits, [-1, blocks, block])  # [T, nb, block] float
    scales = g.op("Reshape", [f"{prefix}.scales", g.const([rows, blocks])])
    scale = g.op("Unsqueeze", [g.op("Gather", [scales, ids], axis=0), g.const([2])])
    if has_zero_points:
        packed = g.op("Reshape", [f"{prefix}.zero_points", g.const([rows, -1])])
        zeros = _unpacked(g, g.op("Gather", [packed, ids], axis=0), bits, [-1, blocks])
        zero = g.op("Unsqueeze", [zeros, g.const([2])])
    else:
        zero = g.const(float(1 << (bits - 1)), np.float32, "default_zero")
    rows_out = g.op("Mul", [g.op("Sub", [values, zero]), scale])
    return g.op("Reshape", [rows_out, g.const([-1, width])], "embeddings")


def _unpacked(g, packed: str, bits: int, shape: list[int]) -> str:
    """uint8 codes -> float32 values of `shape`: 8-bit as they are; 4-bit two per byte,
    low nibble first. A shape's last dimension may be shorter than the unpacked bytes (a
    row's zero points padded to a whole byte), so the values are sliced to it."""
    if bits == 8:
        return g.op("Cast", [g.op("Reshape", [packed, g.const(shape)])], to=FLOAT)
    low = g.op("BitwiseAnd", [packed, g.const(15, np.uint8, "nibble")])
    high = g.op("BitShift", [packed, g.const(4, np.uint8, "shift")], direction="RIGHT")
    pairs = g.op("Concat", [g.op("Unsqueeze", [low, g.const([-1])]),
                            g.op("Unsqueeze", [high, g.const([-1])])], axis=-1)
    # Reshape's 0 keeps an input dimension: the byte pairs become one last axis.
    flat = g.op("Reshape", [pairs, g.const([0] * (len(shape) - 1) + [-1])])
    flat = g.op("Slice", [flat, g.const([0]), g.const([shape[-1]]), g.const([-1])])
    return g.op("Cast", [flat], to=FLOAT)
