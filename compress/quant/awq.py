"""AWQ: activation-aware weight quantization (Lin et al., arXiv 2306.00978).

Inputs that carry large activations matter most, so their weight columns are scaled up
before rounding (smaller relative rounding error) and scaled back down afterwards:

    s = m^alpha / sqrt(max(m^alpha) * min(m^alpha)),  m_j = mean_t |x_tj|
    W_hat = Q(W diag(s)) diag(s)^-1

with alpha on the grid {0, 1/n, ..., (n-1)/n} chosen to minimise the layer's output error on
the calibration tokens

    E(W_hat) = sum_t ||(W - W_hat) x_t||^2 = tr((W - W_hat) H (W - W_hat)^T),  H = sum_t x_t x_t^T

(an identity, so no activation samples need keeping). Then each (row, group) range of
W diag(s) is shrunk by the clip ratio in [1 - max_shrink, 1] that minimises the group's share
of E. alpha = 0 gives s = 1, i.e. round-to-nearest, so the search can only improve on RTN.

Deviations from the paper, on purpose:
(a) The paper folds s into the previous operator (the RMSNorm weight or the previous
    linear), so inference costs nothing extra. Here every linear keeps its own s in the
    file (`input_scale`: in_features fp16 values, counted in bits per weight) and is
    dequantized as W = dequant(codes) / s. That needs no knowledge of the model's graph and
    lets linears sharing an input (q/k/v, gate/up) each pick their own s; exporters may
    fold it where the graph allows.
(b) The objective is each linear's own output error (through H), where the paper measures
    the output of the module around it (e.g. the whole attention) with a forward pass.
(c) The clip search uses only the diagonal blocks H_gg of H (each group's error as if the
    other groups were exact: cross-group terms are ignored, as the paper's per-group search
    does). The full E is checked at the end and the clip is dropped if it did not help.

s is rounded to fp16 before it is used, so the stored form dequantizes to exactly the
weights the search evaluated. Pruned zeros stay zero: 0 * s = 0 and zero points are integers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from compress.errors import CompressError
from compress.quant.base import IntQuantConfig, register_quantizer
from compress.quant.grid import (
    check_grid,
    dequantize_codes,
    expand_groups,
    group_params,
    quantize_to_codes,
)
from compress.stats import ABS_SUM, HESSIAN, LinearStats
from models.qformat import AffineQuantized

# The AWQ reference clamps m^alpha at 1e-4 so dead inputs do not give s = 0 (division by 0).
_MIN_POWER = 1e-4
# s must survive the fp16 file format: stay within its normal range.
_FP16_TINY, _FP16_MAX = 2.0**-14, 65504.0


@dataclasses.dataclass
class AWQConfig(IntQuantConfig):
    """AWQ's knobs on top of the shared integer-grid ones."""

    method: ClassVar[str] = "awq"
    needs: ClassVar[frozenset[str]] = frozenset({ABS_SUM, HESSIAN})

    # Number of alphas tried, {0, 1/grid, ..., (grid-1)/grid}: the paper uses 20. Each costs
    # one quantization and one [out, in] x [in, in] product.
    grid: int = 20
    # Shrink each group's range where that lowers the output error: outliers then cost less
    # resolution for the other weights of their group (paper: on, except for q/k).
    clip_search: bool = True
    # Number of clip ratios tried, evenly spaced from 1 down to 1 - max_shrink.
    clip_grid: int = 20
    # Largest fraction of a group's range the clip search may cut (paper: 0.5).
    max_shrink: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("grid", "clip_grid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CompressError(f"{name} {value!r} must be a positive integer (paper: 20)")
        if not isinstance(self.clip_search, bool):
            raise CompressError(f"clip_search {self.clip_search!r} must be true or false")
        if isinstance(self.max_shrink, bool) or not isinstance(self.max_shrink, int | float) \
                or not math.isfinite(self.max_shrink) or not 0.0 <= self.max_shrink < 1.0:
            raise CompressError(f"max_shrink {self.max_shrink!r} must be in [0, 1) "
                                "(the paper uses 0.5)")
        self.max_shrink = float(self.max_shrink)


def layer_output_error(weight: torch.Tensor, approx: torch.Tensor,
                       hessian: torch.Tensor) -> float:
    """tr((W - W_hat) H (W - W_hat)^T): the summed squared output error over the tokens."""
    diff = weight.float() - approx.float()
    return float(((diff @ hessian.float()) * diff).sum())


def _candidate_scales(mean_abs_x: torch.Tensor, alpha: float) -> torch.Tensor:
    """s for one alpha, already rounded to fp16 (what the file will hold), as fp32."""
    s = mean_abs_x.float().pow(alpha).clamp(min=_MIN_POWER)
    s = s / (s.max() * s.min()).sqrt()
    return s.clamp(_FP16_TINY, _FP16_MAX).to(torch.float16).float()


def _fake_quantize(weight: torch.Tensor, s: torch.Tensor, bits: int, group: int,
                   symmetric: bool, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Q(W diag(s)) diag(s)^-1 computed exactly as `AffineQuantized.dequantize` does."""
    scaled = weight * s
    scale, zero = group_params(scaled, bits, group, symmetric, clip)
    scale, zero = expand_groups(scale, group), expand_groups(zero, group)
    codes = quantize_to_codes(scaled, scale, zero, bits)
    return dequantize_codes(codes, scale, zero) / s


def awq_scales(weight: torch.Tensor, mean_abs_x: torch.Tensor, hessian: torch.Tensor,
               bits: int, group_size: int | None, symmetric: bool, grid: int = 20
               ) -> torch.Tensor:
    """The per-input scale s [in] (fp16 values held in fp32) whose alpha minimises E."""
    group = check_grid(bits, group_size, weight.shape[1])
    w, h = weight.float(), hessian.float()
    best_s = torch.ones_like(mean_abs_x, dtype=torch.float32)
    best_error = math.inf
    for k in range(grid):
        s = _candidate_scales(mean_abs_x, k / grid)
        error = layer_output_error(w, _fake_quantize(w, s, bits, group, symmetric), h)
        if error < best_error:  # strict: on a tie the smaller alpha (closer to RTN) stays
            best_s, best_error = s, error
    return best_s


def _group_errors(weight: torch.Tensor, blocks: torch.Tensor, ratio: float, bits: int,
                  group: int, symmetric: bool) -> torch.Tensor:
    """Each (row, group)'s error d_g H_gg d_g^T with every range shrunk by `ratio`."""
    ones = torch.ones(weight.shape[1], device=weight.device)
    diff = weight - _fake_quantize(weight, ones, bits, group, symmetric, ratio)
    diff = diff.reshape(weight.shape[0], -1, group)  # [out, n_groups, group]
    return (torch.einsum("rga,gab->rgb", diff, blocks) * diff).sum(dim=2)


def awq_clip(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None,
             symmetric: bool, clip_grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """Clip ratios [out, n_groups] in [1 - max_shrink, 1], each minimising its group's error.

    `weight` and `hessian` are those of the matrix being rounded, i.e. W diag(s) and
    diag(s)^-1 H diag(s)^-1. Cross-group terms of H are ignored (see the module docstring)."""
    out, inp = weight.shape
    group = check_grid(bits, group_size, inp)
    n_groups = inp // group
    # Diagonal blocks: blocks[g] = H[g*group:(g+1)*group, g*group:(g+1)*group].
    blocks = hessian.float().reshape(n_groups, group, n_groups, group)
    blocks = blocks.diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    ratios = torch.linspace(1.0, 1.0 - max_shrink, clip_grid, device=weight.device)
    errors = torch.stack([_group_errors(weight.float(), blocks, float(r), bits, group,
                                        symmetric) for r in ratios])
    return ratios[errors.argmin(dim=0)]  # argmin keeps the first (ratio 1) on ties


def awq_quantize(weight: torch.Tensor, mean_abs_x: torch.Tensor, hessian: torch.Tensor,
                 bits: int, group_size: int | None, symmetric: bool, *, grid: int = 20,
                 clip_search: bool = True, clip_grid: int = 20,
                 max_shrink: float = 0.5) -> AffineQuantized:
    """AWQ (arXiv 2306.00978) on one weight [out, in]: codes of W diag(s) plus s itself.

    `mean_abs_x` [in] is mean_t |x_tj| and `hessian` [in, in] is sum_t x_t x_t^T."""
    out, inp = weight.shape
    group = check_grid(bits, group_size, inp)
    if hessian.shape != (inp, inp) or mean_abs_x.shape != (inp,):
        raise ValueError(f"statistics of shapes {tuple(mean_abs_x.shape)} and "
                         f"{tuple(hessian.shape)} do not fit {inp} inputs")
    if not (torch.isfinite(hessian).all() and torch.isfinite(mean_abs_x).all()):
        raise CompressError("the calibration statistics hold inf/NaN: the calibration inputs "
                            "overflowed; calibrate in fp32 or keep the layer with --ignore")
    w, h = weight.detach().float(), hessian.detach().float()
    s = awq_scales(w, mean_abs_x, h, bits, group, symmetric, grid)
    clip: torch.Tensor | float = 1.0
    if clip_search:
        # The scaled matrix W diag(s) sees inputs x / s, whose Hessian is H / (s s^T).
        candidate = awq_clip(w * s, h / torch.outer(s, s), bits, group, symmetric, clip_grid,
                             max_shrink)
        clipped = layer_output_error(w, _fake_quantize(w, s, bits, group, symmetric,
                                                       candidate), h)
        if clipped < layer_output_error(w, _fake_quantize(w, s, bits, group, symmetric), h):
            clip = candidate
    scale, zero = group_params(w * s, bits, group, symmetric, clip)
    codes = quantize_to_codes(w * s, expand_groups(scale, group), expand_groups(zero, group),
                              bits)
    return AffineQuantized(codes=codes.to(torch.uint8), scales=scale.to(torch.float16),
                           zeros=None if symmetric else zero.to(torch.uint8), bits=bits,
                           group_size=group, input_scale=s.to(torch.float16))


@register_quantizer(AWQConfig)
def awq_quantize_weight(weight: torch.Tensor, stats: LinearStats,
                        config: AWQConfig) -> AffineQuantized:
    """AWQ on one linear layer with the config's grid and clip search."""
    if stats.abs_sum is None or stats.hessian is None:
        raise RuntimeError("abs_sum and hessian were not both collected for this layer")
    return awq_quantize(weight, stats.mean_abs(), stats.hessian, config.bits, config.group_size,
                        config.symmetric, grid=config.grid, clip_search=config.clip_search,
                        clip_grid=config.clip_grid, max_shrink=config.max_shrink)
