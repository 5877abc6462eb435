"""Palettized (k-means lookup-table) weights as Apple ships them on device (arXiv 2407.21075):
b-bit indices into a table of 2^b fp16 values, one table per group of `group_rows` output
rows (16 in the paper) or one for the whole tensor (group_rows = out_features).

    W[r, j] = lut[r // group_rows, index[r, j]]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from models.qformat.packing import pack_bits, packed_nbytes, unpack_bits

PALETTE = "palette"


@dataclasses.dataclass
class PaletteQuantized:
    indices: torch.Tensor  # uint8 [out, in], values in [0, 2^bits)
    lut: torch.Tensor  # fp16 [n_groups, 2^bits]
    bits: int
    group_rows: int  # output rows sharing one table

    scheme = PALETTE

    def __post_init__(self) -> None:
        out = self.indices.shape[0]
        if out % self.group_rows:
            raise ValueError(f"{self.group_rows} rows per table do not divide {out} rows")
        expected = (out // self.group_rows, 1 << self.bits)
        if tuple(self.lut.shape) != expected:
            raise ValueError(f"lookup tables have shape {tuple(self.lut.shape)}, "
                             f"expected {expected}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.indices.shape)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight [out, in] these indices stand for."""
        out, _ = self.shape
        table_of_row = torch.arange(out) // self.group_rows
        row_tables = self.lut.float()[table_of_row]  # [out, 2^b]
        return torch.gather(row_tables, 1, self.indices.long())

    def meta(self) -> dict[str, Any]:
        return {"scheme": PALETTE, "bits": self.bits, "group_rows": self.group_rows,
                "shape": list(self.shape)}

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.qindices": pack_bits(self.indices, self.bits),
                f"{prefix}.lut": self.lut.to(torch.float16).contiguous()}

    @classmethod
    def from_tensors(cls, prefix: str, tensors: dict[str, torch.Tensor],
                     meta: dict[str, Any]) -> PaletteQuantized:
        out, inp = (int(n) for n in meta["shape"])
        bits = int(meta["bits"])
        indices = unpack_bits(tensors[f"{prefix}.qindices"], bits, out * inp).view(out, inp)
        return cls(indices=indices, lut=tensors[f"{prefix}.lut"], bits=bits,
                   group_rows=int(meta["group_rows"]))

    def storage_bytes(self) -> int:
        out, inp = self.shape
        return packed_nbytes(out * inp, self.bits) + 2 * self.lut.numel()
