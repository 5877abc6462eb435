"""GPTQ: quantize a linear layer column by column, feeding each column's rounding error back
into the columns not yet quantized (Frantar et al., arXiv 2210.17323).

    q_j = scale_g * (clamp(round(w_j / scale_g) + zero_g, 0, 2^b - 1) - zero_g)
    err_j = (w_j - q_j) / [Hinv]_jj,    W[:, j+1:] -= err_j * Hinv[j, j+1:]

with H = sum_t x_t x_t^T over the calibration tokens (the paper's 2 X X^T / n: the factor
and the 1/n cancel, the dampening being relative to mean(diag H)) and Hinv the upper
Cholesky factor of (H + lambda * mean(diag H) * I)^-1, whose row j is the OBS update
restricted to the columns not yet processed. Each step greedily minimises the layer's
output error ||W X - W_hat X||^2, so GPTQ beats round-to-nearest most on correlated inputs.
The updates to later columns are applied once per block of `block_size` columns (the
paper's lazy batch): the same result up to fp rounding, with one matmul per block.

Choices, on purpose:
(a) A group's scale and zero point are fitted when its first column is reached, from the
    weights as updated by every earlier column (the paper's choice), exactly: columns of the
    group beyond the current lazy block get the block's pending feedback added first.
(b) act_order processes columns by decreasing diag(H). With groups it uses *static groups*:
    every group's grid is fitted up front from the original weight on consecutive *original*
    columns, so the stored groups stay contiguous in the original order and no g_idx
    (column -> group map) has to be stored or understood by loaders and exporters. The
    price: the grid does not see the error feedback.
(c) Stacking on pruning: entries that are 0 on entry (pruned) get code = zero point, so they
    dequantize to exactly 0, and the error feedback treats them as quantized to 0 (their
    drift is pushed on to later columns), like SparseGPT's fixed mask.

Every q_j is computed as scale * (code - zero) in fp32 from the fp16-rounded scale, as
`AffineQuantized.dequantize` does, so the stored codes give bit for bit the weights the
error feedback used.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from compress.errors import CompressError
from compress.hessian import check_lazy_batch_knobs, inverse_hessian_factor, prepare_hessian
from compress.linalg import lazy_update_threads, single_threaded
from compress.quant.base import register_quantizer
from compress.quant.grid import check_grid, dequantize_codes, group_params, quantize_to_codes
from compress.quant.mixed_int import MixedIntQuantConfig
from compress.stats import HESSIAN, LinearStats
from models.qformat import AffineQuantized


@dataclasses.dataclass
class GPTQConfig(MixedIntQuantConfig):
    """GPTQ's knobs on top of the shared integer-grid ones; needs the full input Hessian.
    With target_bits the widths are allocated from round-to-nearest sensitivities and
    GPTQ runs at each layer's width (compress.quant.mixed_int says why)."""

    method: ClassVar[str] = "gptq"
    needs: ClassVar[frozenset[str]] = frozenset({HESSIAN})

    # Columns whose error feedback to the later columns is applied as one matmul (lazy
    # batch). The paper uses 128: the result is the same up to fp rounding, larger blocks
    # trade memory traffic for a longer inner loop.
    block_size: int = 128
    # Fraction of mean(diag H) added to H's diagonal: makes H invertible when the
    # calibration tokens span fewer dimensions than the layer has inputs (paper: 1%).
    dampening: float = 0.01
    # Quantize the columns with the most input energy (largest diag H) first, while many
    # columns are left to absorb their error. With groups the grids are fitted up front on
    # the original weight (static groups), so no column -> group map needs storing and the
    # file is the same size. On by default: on SmolLM2-135M at 4 bits, groups of 64, input
    # order gave Wikipedia perplexity 27.65 (worse than round-to-nearest's 26.87), act
    # order 25.15 (benchmarks/gptq_vs_rtn.py and BENCHMARKS.md say why).
    act_order: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dampening = check_lazy_batch_knobs(self.block_size, self.dampening)
        if not isinstance(self.act_order, bool):
            raise CompressError(f"act_order {self.act_order!r} must be true or false")


@dataclasses.dataclass
class _GroupGrid:
    """Scales and zero points [out, n_groups] and the group of each column, in the order the
    columns are processed."""

    bits: int
    group: int
    symmetric: bool
    scale: torch.Tensor
    zero: torch.Tensor
    group_of: list[int]  # group index of the j-th processed column (a list: no device sync)
    fit_on_the_fly: bool  # False: fitted up front (act_order's static groups)

    def fit(self, index: int, columns: torch.Tensor) -> None:
        scale, zero = group_params(columns, self.bits, columns.shape[1], self.symmetric)
        self.scale[:, index], self.zero[:, index] = scale[:, 0], zero[:, 0]

    def column(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.group_of[j]
        return self.scale[:, g], self.zero[:, g]


def _current_columns(w: torch.Tensor, w1: torch.Tensor, err1: torch.Tensor, hinv: torch.Tensor,
                     i1: int, i: int, width: int) -> torch.Tensor:
    """Columns [i1 + i, i1 + i + width) as updated by every column before i1 + i.

    Those inside the block are current in w1; those beyond it still miss the block's lazy
    feedback from columns i1 .. i1 + i - 1, which is added here."""
    i2 = i1 + w1.shape[1]
    end = i1 + i + width
    inside = w1[:, i:min(end, i2) - i1]
    if end <= i2:
        return inside
    outside = w[:, i2:end] - err1[:, :i] @ hinv[i1:i1 + i, i2:end]
    return torch.cat([inside, outside], dim=1)


def _quantize_block(w: torch.Tensor, hinv: torch.Tensor, pruned: torch.Tensor,
                    codes: torch.Tensor, grid: _GroupGrid, i1: int, i2: int) -> None:
    """Quantize columns [i1, i2) with error feedback into `codes`, then update columns i2:."""
    w1 = w[:, i1:i2].clone()
    h1 = hinv[i1:i2, i1:i2]
    err1 = torch.zeros_like(w1)
    for i in range(i2 - i1):
        j = i1 + i
        if grid.fit_on_the_fly and j % grid.group == 0:
            # Pruned entries will be 0 whatever they drifted to; 0 is always on the grid.
            columns = _current_columns(w, w1, err1, hinv, i1, i, grid.group)
            grid.fit(j // grid.group, columns.masked_fill(pruned[:, j:j + grid.group], 0.0))
        scale, zero = grid.column(j)
        code = quantize_to_codes(w1[:, i], scale, zero, grid.bits)
        code = torch.where(pruned[:, j], zero, code)
        err = (w1[:, i] - dequantize_codes(code, scale, zero)) / h1[i, i]
        w1[:, i + 1:] -= err.unsqueeze(1) * h1[i, i + 1:].unsqueeze(0)
        codes[:, j] = code
        err1[:, i] = err
    with lazy_update_threads(w, i2):
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int,
                  group_size: int | None, symmetric: bool, *, block_size: int = 128,
                  dampening: float = 0.01, act_order: bool = False) -> AffineQuantized:
    """GPTQ (arXiv 2210.17323) on one weight [out, in] with H = sum_t x_t x_t^T [in, in].

    Returns the stored form; its `dequantize()` is the weight GPTQ chose. Entries that are 0
    in `weight` dequantize to exactly 0; dead inputs (H_jj = 0) come out as zero columns."""
    rows, cols = weight.shape
    group = check_grid(bits, group_size, cols)
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({cols}, {cols})")
    if block_size < 1:
        raise ValueError(f"block_size {block_size} must be >= 1")
    w = weight.detach().to(torch.float32).clone()
    pruned = w == 0  # fixed once, before any update, like SparseGPT's mask
    h = prepare_hessian(hessian, w)
    order = torch.arange(cols, device=w.device)
    if act_order:
        order = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        scale, zero = group_params(w, bits, group, symmetric)  # static groups, original order
        w, pruned, h = w[:, order], pruned[:, order], h[order][:, order]
    else:
        scale = torch.zeros(rows, cols // group, device=w.device)
        zero = torch.zeros_like(scale)
    grid = _GroupGrid(bits, group, symmetric, scale, zero, (order // group).tolist(),
                      fit_on_the_fly=not act_order)
    def rebuild() -> torch.Tensor:  # H again, for a retry with more dampening
        again = prepare_hessian(hessian, w.clone())
        return again[order][:, order] if act_order else again

    hinv = inverse_hessian_factor(h, dampening, "rtn", rebuild=rebuild)
    del h  # factorised in place: its storage went into hinv's computation
    codes = torch.empty_like(w)
    with single_threaded():
        for i1 in range(0, cols, block_size):
            _quantize_block(w, hinv, pruned, codes, grid, i1, min(i1 + block_size, cols))
    codes = codes[:, torch.argsort(order)]  # back to the original column order
    return AffineQuantized(codes=codes.to(torch.uint8), scales=grid.scale.to(torch.float16),
                           zeros=None if symmetric else grid.zero.to(torch.uint8), bits=bits,
                           group_size=group)


@register_quantizer(GPTQConfig)
def gptq_quantize_weight(weight: torch.Tensor, stats: LinearStats,
                         config: GPTQConfig) -> AffineQuantized:
    """GPTQ on one linear layer with the config's grid, block size, dampening and order."""
    if stats.hessian is None:
        raise RuntimeError("hessian was not collected for this layer")
    return gptq_quantize(weight, stats.hessian, config.bits, config.group_size, config.symmetric,
                         block_size=config.block_size, dampening=config.dampening,
                         act_order=config.act_order)
