"""Round-to-nearest (RTN): every weight goes to the nearest point of its group's grid.

    w_hat = scale * (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero)

with per-group scale and zero point from the group's range (see `compress.quant.grid`).
The data-free baseline that GPTQ (arXiv 2210.17323) and AWQ (arXiv 2306.00978) improve on.
With `target_bits` each layer gets its own width from `bits_choices`
(compress.quant.mixed_int, compress.quant.mixed_plan).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from compress.quant.base import register_quantizer
from compress.quant.grid import check_grid, expand_groups, group_params, quantize_to_codes
from compress.quant.mixed_int import MixedIntQuantConfig
from compress.stats import LinearStats
from models.qformat import AffineQuantized


@dataclasses.dataclass
class RTNConfig(MixedIntQuantConfig):
    """Round-to-nearest on the integer grid, one width or mixed (target_bits)."""

    method: ClassVar[str] = "rtn"

    # The mixed-bit pre-pass's round-to-nearest codes are this method's own: kept.
    @property
    def trial_is_final(self) -> bool:
        return True


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int | None,
                 symmetric: bool) -> AffineQuantized:
    """Quantize `weight` [out, in] to the nearest grid point of its group."""
    group = check_grid(bits, group_size, weight.shape[1])
    scale, zero = group_params(weight, bits, group, symmetric)
    codes = quantize_to_codes(weight.float(), expand_groups(scale, group),
                              expand_groups(zero, group), bits)
    return AffineQuantized(codes=codes.to(torch.uint8), scales=scale.to(torch.float16),
                           zeros=None if symmetric else zero.to(torch.uint8), bits=bits,
                           group_size=group)


@register_quantizer(RTNConfig)
def rtn_quantize_weight(weight: torch.Tensor, _stats: LinearStats,
                        config: RTNConfig) -> AffineQuantized:
    return rtn_quantize(weight, config.bits, config.group_size, config.symmetric)
