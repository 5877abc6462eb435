"""The embedding table and LM head quantized at export time, and read back as floats.

An artifact's compression stages quantize the decoder's linears; its embedding table
and head stay float (bf16/fp32), and in a tied model the head is the table. Decode reads
the whole head once per token, so in a small model it is the largest single read:
SmolLM2-135M's 49152 x 576 table is 113 MB in float32 against about 50 MB for all its
4-bit linears. `--embedding-bits` quantizes it per row in groups of g inputs,

    T[r, j] ~ scale[r, j // g] * (code[r, j] - zero[r, j // g])

with the quantizer the caller passes (the toolkit passes compress' round-to-nearest),
one block of rows at a time (groups never cross rows, so the blocks give the same codes
as the whole table). The verification reference then uses these same dequantized
values (`QuantizedTables.rows`), so the export is still checked for exactness; what the
quantization costs in quality is measured by the benchmarks, not hidden by the check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
import torch

from models.qformat import AffineQuantized


def quantize_rows(blocks: Iterable[np.ndarray],
                  quantizer: Callable[[torch.Tensor], AffineQuantized]) -> AffineQuantized:
    """One AffineQuantized of the table given as consecutive row blocks."""
    parts = [quantizer(torch.from_numpy(np.asarray(block, dtype=np.float32)))
             for block in blocks]
    first = parts[0]
    zeros = None if first.zeros is None else torch.cat([p.zeros for p in parts])
    return AffineQuantized(codes=torch.cat([p.codes for p in parts]),
                           scales=torch.cat([p.scales for p in parts]), zeros=zeros,
                           bits=first.bits, group_size=first.group_size)


def dequantized_rows(packed: AffineQuantized, rows: torch.Tensor) -> torch.Tensor:
    """`packed.dequantize()[rows]` without dequantizing the other rows."""
    group = packed.group_size
    scale = packed.scales[rows].float().repeat_interleave(group, dim=1)
    zero = packed.zero_points()[rows].float().repeat_interleave(group, dim=1)
    return scale * (packed.codes[rows].float() - zero)


@dataclasses.dataclass
class QuantizedTables:
    """Stored tensor name -> its export-time quantization (the table, an untied head)."""

    by_name: dict[str, AffineQuantized]

    def rows(self, name: str, rows: torch.Tensor) -> torch.Tensor | None:
        packed = self.by_name.get(name)
        return None if packed is None else dequantized_rows(packed, rows)

    def swapped_into(self, module: torch.nn.Module):
        """A context in which `module`'s parameters of these names hold the dequantized
        values (a tied head follows the table: it is the same parameter)."""
        import contextlib

        params = dict(module.named_parameters(remove_duplicate=False))

        @contextlib.contextmanager
        def swap():
            saved = {}
            try:
                for name, packed in self.by_name.items():
                    saved[name] = params[name].data
                    params[name].data = packed.dequantize().to(saved[name].dtype)
                yield
            finally:
                for name, data in saved.items():
                    params[name].data = data
        return swap()
