"""Palettization: k-means lookup-table quantization, optionally with mixed bit-widths.

    W[r, j] ~= lut[r // g, idx[r, j]],   lut[t] = k-means centroids (k = 2^b, fp16) of the
    weights in rows [t g, (t + 1) g),    idx = the nearest centroid's index

as in Apple's on-device foundation model (arXiv 2407.21075): 4-bit palettes shared by
groups of 16 rows, and a mix of 2- and 4-bit layers for about 3.5-3.7 bits per weight.
With `target_bits`, a dense pre-pass measures every layer's sensitivity at every choice
of bits (`compress.quant.sensitivity`: absolute or relative output error, or the measured
KL of the next-token distributions) and `compress.quant.mixed_bits.allocate_bits` spends
the budget where it helps most (`compress.quant.mixed_plan`, shared with rtn and gptq).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from compress.config import register_handler
from compress.errors import CompressError
from compress.quant.base import QuantConfig
from compress.quant.engine import quantize_blockwise
from compress.quant.kmeans import kmeans_1d
from compress.quant.mixed_config import MixedBitsConfig, check_width, positive_int
from compress.quant.mixed_plan import quantize_mixed
from compress.quant.report import QuantReport
from compress.stats import HESSIAN, SQ_NORM, LinearStats
from compress.sweep import Progress
from models.qformat import PaletteQuantized

# Index widths a palettized layer may use (those Core ML's palettization stores, but 1).
PALETTE_BITS = (2, 3, 4, 6, 8)


@dataclasses.dataclass
class PalettizeConfig(MixedBitsConfig, QuantConfig):
    """k-means palettization (arXiv 2407.21075), uniform or mixed bit-width (the
    target_bits, bits_choices, sensitivity and table_bits knobs: MixedBitsConfig)."""

    method: ClassVar[str] = "palettize"
    mixable_bits: ClassVar[tuple[int, ...]] = PALETTE_BITS

    # Each weight stores a b-bit index into a table of 2^b fp16 values: 2, 3, 4, 6 or 8.
    # Ignored when target_bits is set (then bits_choices are mixed).
    bits: int = 4
    # Output rows sharing one table: 16 in Apple's model, where a 4-bit table costs
    # 16 x 16 bits per 16 rows (~0.005 bits per weight at 3072 inputs) and fits the rows'
    # local range far better than one table per tensor (None).
    group_rows: int | None = 16
    # Lloyd iterations; 1-D k-means settles within a few dozen and stops early once stable.
    iters: int = 20
    # Weight each squared error by its input's second moment sum_t x_j^2 (the Hessian
    # diagonal), so the tables favour the weights that move the outputs most: sensitive
    # k-means (SqueezeLLM, arXiv 2306.07629; coremltools). Needs calibration data. On by
    # default because plain k-means spends the table on the bulk of small weights and
    # collapses an LLM at 3 bits (BENCHMARKS.md: palettize-3b against
    # palettize-3b-data-free on SmolLM2). false = data-free clustering.
    weighted: bool = True

    # A property, not a ClassVar: what calibration must collect depends on the knobs.
    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        if self.target_bits is not None:
            return frozenset({HESSIAN})  # sensitivities tr(dW H dW^T); its diagonal weighs
        return frozenset({SQ_NORM}) if self.weighted else frozenset()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_width("bits", self.bits, PALETTE_BITS, self.method)
        if self.group_rows is not None and not positive_int(self.group_rows):
            raise CompressError(f"group_rows {self.group_rows!r} must be a positive integer "
                                "(16 as in Apple's model) or omitted for one table per tensor")
        if not positive_int(self.iters):
            raise CompressError(f"iters {self.iters!r} must be a positive integer, e.g. 20")
        if not isinstance(self.weighted, bool):
            raise CompressError(f"weighted {self.weighted!r} must be true or false")
        self.check_mixed()

    # The mixed-bit pre-pass (compress.quant.mixed_plan) judges the palettes themselves;
    # data-free k-means gives the main pass the same palettes again, so they are kept.
    def trial(self, weight: torch.Tensor, hessian: torch.Tensor | None,
              bits: int) -> PaletteQuantized:
        importance = hessian.diagonal() if self.weighted else None
        return palettize(weight, bits, self.group_rows, self.iters, importance)

    @property
    def trial_is_final(self) -> bool:
        return not self.weighted

    @property
    def trial_needs(self) -> frozenset[str]:
        return frozenset({HESSIAN}) if self.weighted else frozenset()


def palettize(weight: torch.Tensor, bits: int, group_rows: int | None, iters: int,
              importance: torch.Tensor | None = None) -> PaletteQuantized:
    """W[r, j] ~= lut[r // g, idx[r, j]] with each lut row the 2^b k-means centroids of its
    g rows (arXiv 2407.21075). `importance` (broadcastable to `weight` [out, in], e.g. the
    Hessian diagonal [in]) weights each weight's squared error. Pruned zeros stay zero."""
    check_width("bits", bits, PALETTE_BITS, "palettize")
    out, inp = weight.shape
    rows = out if group_rows is None else group_rows
    if out % rows:
        raise CompressError(f"group_rows {rows} does not divide the {out} output rows: choose "
                            "a divisor (e.g. 16 or 8) or omit it for one table per tensor")
    values = weight.float().reshape(out // rows, rows * inp)  # consecutive rows per group
    weights = None
    if importance is not None:
        weights = importance.float().expand(out, inp).reshape(out // rows, rows * inp)
    table, assignment = kmeans_1d(values, 1 << bits, iters, weights)
    return PaletteQuantized(indices=assignment.reshape(out, inp).to(torch.uint8), lut=table,
                            bits=bits, group_rows=rows)


def input_importance(stats: LinearStats) -> torch.Tensor:
    """sum_t x_j^2 per input j: the diagonal of H = sum_t x_t x_t^T."""
    if stats.sq_norm is not None:
        return stats.sq_norm
    if stats.hessian is not None:
        return stats.hessian.diagonal()
    raise RuntimeError("weighted palettization needs sq_norm or hessian statistics")


def palettize_weight(weight: torch.Tensor, stats: LinearStats,
                     config: PalettizeConfig) -> PaletteQuantized:
    """The per-layer function the quantization engine calls (uniform `config.bits`)."""
    importance = input_importance(stats) if config.weighted else None
    return palettize(weight, config.bits, config.group_rows, config.iters, importance)


# Every quantizer type carries its per-layer function, as `register_quantizer` sets it;
# the handler is registered by hand below because mixed bits needs a pre-pass.
PalettizeConfig.quantize_weight = staticmethod(palettize_weight)


@register_handler(PalettizeConfig)
def palettize_model(model: nn.Module, config: PalettizeConfig, calib: torch.Tensor | None, *,
                    device: str | torch.device = "cpu",
                    forward_dtype: torch.dtype = torch.float32, batch_size: int = 4,
                    progress: Progress | None = None) -> QuantReport:
    """`compress.apply`'s handler. Uniform bits: one sweep (data-free when not weighted).
    Mixed bits: `compress.quant.mixed_plan.quantize_mixed` (a dense pre-pass measures
    every linear's sensitivity at every choice, `allocate_bits` picks each layer's bits
    under `target_bits`, and the main sweep palettizes every layer at its bits)."""
    if config.needs and (calib is None or calib.ndim != 2 or calib.shape[0] == 0):
        fix = ("drop target_bits" if config.target_bits is not None
               else "set weighted: false (--no-weighted) for data-free tables")
        raise CompressError("palettize needs calibration token ids [N, L] for "
                            f"{'target_bits' if config.target_bits is not None else 'weighted'}"
                            f" k-means: pass calibration data or {fix}")
    options = {"device": device, "forward_dtype": forward_dtype, "batch_size": batch_size,
               "progress": progress}
    if config.target_bits is None:
        return quantize_blockwise(model, config, calib, palettize_weight, **options)
    return quantize_mixed(model, config, calib, palettize_weight, **options)
