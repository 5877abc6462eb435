"""Affine (integer) weight quantization as stored on disk: b-bit codes, one fp16 scale and
one integer zero point per group of `group_size` consecutive inputs of each output row.

    W[r, j] = scale[r, g] * (code[r, j] - zero[r, g]),  g = j // group_size
    symmetric: zero = 2^(b-1) for every group and no zero points are stored

With AWQ (arXiv 2306.00978) the codes quantize W * diag(s); the per-input scale s is
stored too and the weight is W = dequant(codes) / s. Because zero points are integers,
a weight of 0 (e.g. a pruned one) is represented exactly by code = zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from models.qformat.packing import pack_bits, packed_nbytes, unpack_bits

AFFINE = "affine"


@dataclasses.dataclass
class AffineQuantized:
    codes: torch.Tensor  # uint8 [out, in], values in [0, 2^bits)
    scales: torch.Tensor  # fp16 [out, n_groups]
    zeros: torch.Tensor | None  # uint8 [out, n_groups]; None = symmetric
    bits: int
    group_size: int  # inputs per group; in_features means one group per row (per channel)
    input_scale: torch.Tensor | None = None  # fp16 [in] (AWQ); None = no input scaling

    scheme = AFFINE

    def __post_init__(self) -> None:
        out, inp = self.codes.shape
        if inp % self.group_size:
            raise ValueError(f"group size {self.group_size} does not divide {inp} inputs")
        groups = inp // self.group_size
        if tuple(self.scales.shape) != (out, groups):
            raise ValueError(f"scales have shape {tuple(self.scales.shape)}, "
                             f"expected {(out, groups)}")
        if self.zeros is not None and tuple(self.zeros.shape) != (out, groups):
            raise ValueError(f"zero points have shape {tuple(self.zeros.shape)}, "
                             f"expected {(out, groups)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def zero_points(self) -> torch.Tensor:
        if self.zeros is not None:
            return self.zeros
        return torch.full_like(self.scales, 1 << (self.bits - 1), dtype=torch.uint8)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight [out, in] these codes stand for."""
        scale = self.scales.float().repeat_interleave(self.group_size, dim=1)
        zero = self.zero_points().float().repeat_interleave(self.group_size, dim=1)
        weight = scale * (self.codes.float() - zero)
        if self.input_scale is not None:
            weight = weight / self.input_scale.float()
        return weight

    def meta(self) -> dict[str, Any]:
        return {"scheme": AFFINE, "bits": self.bits, "group_size": self.group_size,
                "symmetric": self.zeros is None, "shape": list(self.shape),
                "input_scale": self.input_scale is not None}

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Packed tensors named `{prefix}.qweight`, `.scales`, `.qzeros`, `.input_scale`."""
        out = {f"{prefix}.qweight": pack_bits(self.codes, self.bits),
               f"{prefix}.scales": self.scales.to(torch.float16).contiguous()}
        if self.zeros is not None:
            out[f"{prefix}.qzeros"] = pack_bits(self.zeros, self.bits)
        if self.input_scale is not None:
            out[f"{prefix}.input_scale"] = self.input_scale.to(torch.float16).contiguous()
        return out

    @classmethod
    def from_tensors(cls, prefix: str, tensors: dict[str, torch.Tensor],
                     meta: dict[str, Any]) -> AffineQuantized:
        out, inp = (int(n) for n in meta["shape"])
        bits, group = int(meta["bits"]), int(meta["group_size"])
        groups = inp // group
        zeros = None
        if not meta["symmetric"]:
            zeros = unpack_bits(tensors[f"{prefix}.qzeros"], bits, out * groups).view(out, groups)
        return cls(codes=unpack_bits(tensors[f"{prefix}.qweight"], bits, out * inp).view(out, inp),
                   scales=tensors[f"{prefix}.scales"], zeros=zeros, bits=bits, group_size=group,
                   input_scale=tensors.get(f"{prefix}.input_scale") if meta["input_scale"]
                   else None)

    def storage_bytes(self) -> int:
        """Bytes these tensors take in the file (codes, scales, zero points, input scale)."""
        out, inp = self.shape
        groups = self.scales.numel()
        total = packed_nbytes(out * inp, self.bits) + 2 * groups
        if self.zeros is not None:
            total += packed_nbytes(groups, self.bits)
        if self.input_scale is not None:
            total += 2 * inp
        return total
