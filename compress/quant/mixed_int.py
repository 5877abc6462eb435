"""Mixed bit-widths on the integer grid (rtn, gptq): what `MixedBitsConfig` needs of it.

Stored bits per weight of one layer at b bits in groups of g inputs (models/qformat/affine.py,
the same accounting as `QuantReport.bits_per_weight`):

    q(b) = b + (16 + z) / g,    z = b (a packed zero point per group) or 0 (symmetric)

e.g. 4-bit g64 asymmetric: 4 + 20/64 = 4.3125; 3-bit: 3.297; 6-bit: 6.344. With one
group per output channel (group_size None) g is the layer's input width, so the cost is
known per layer only, and the allocator checks the budget after the pre-pass.

The sensitivity pre-pass judges every layer by its round-to-nearest error at each width
(`trial`), for RTN and GPTQ alike. For RTN it is the final result and is kept for the
main pass. For GPTQ it is a cheap stand-in: GPTQ at b bits costs a Hessian inverse and a
column sweep per layer and width, and its error is not independent of the allocation
(each layer's Hessian comes from the blocks before it, quantized at their own widths),
so the pre-pass ranks layers by RTN's error, which GPTQ reduces but whose order across
layers it broadly keeps, and the main pass then runs GPTQ (arXiv 2210.17323) at each
layer's allocated width. The stored bits per width are the same for both (same grid).
"""

from __future__ import annotations

import dataclasses

import torch

from compress.errors import CompressError
from compress.quant.base import IntQuantConfig
from compress.quant.grid import SUPPORTED_BITS
from compress.quant.mixed_config import MixedBitsConfig
from compress.stats import HESSIAN
from models.qformat import AffineQuantized

# Scale (fp16) bits stored per group.
_SCALE_BITS = 16


@dataclasses.dataclass
class MixedIntQuantConfig(MixedBitsConfig, IntQuantConfig):
    """An integer-grid quantizer that can mix widths (rtn, gptq)."""

    mixable_bits = SUPPORTED_BITS

    # 3 and 6 around the usual 4: 2-bit round-to-nearest codes collapse a small LLM
    # (SmolLM2-135M, RTN 2-bit g32: Wikipedia perplexity 23,627; 3-bit g64: 62.94;
    # 4-bit g64: 26.87; BENCHMARKS.md), so a default mix should not offer them.
    bits_choices: tuple[int, ...] = (3, 4, 6)

    # A property, not a ClassVar: round-to-nearest is data-free, but target_bits needs
    # calibration data for its sensitivities. A method that always needs statistics
    # (GPTQ's Hessian) declares them as its ClassVar `needs`, which takes precedence.
    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({HESSIAN}) if self.target_bits is not None else frozenset()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_mixed()
        if self.target_bits is not None and self.backend != "toolkit":
            raise CompressError(f"backend {self.backend} quantizes every layer at one width: "
                                "drop target_bits for one --bits, or use --backend toolkit "
                                "for mixed bit-widths")

    def choice_cost(self, bits: int) -> tuple[float, str] | None:
        if self.group_size is None:
            return None  # per channel: the group is each layer's input width
        zero = 0 if self.symmetric else bits
        what = ("an fp16 scale" if self.symmetric else f"an fp16 scale and a {bits}-bit "
                "zero point") + f" per {self.group_size} inputs"
        return bits + (_SCALE_BITS + zero) / self.group_size, what

    def trial(self, weight: torch.Tensor, hessian: torch.Tensor | None,
              bits: int) -> AffineQuantized:
        from compress.quant.rtn import rtn_quantize  # rtn's config inherits this class

        return rtn_quantize(weight, bits, self.group_size, self.symmetric)
