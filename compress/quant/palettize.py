"""Palettization: k-means lookup-table quantization, optionally with mixed bit-widths.

    W[r, j] ~= lut[r // g, idx[r, j]],   lut[t] = k-means centroids (k = 2^b, fp16) of the
    weights in rows [t g, (t + 1) g),    idx = the nearest centroid's index

as in Apple's on-device foundation model (arXiv 2407.21075): 4-bit palettes shared by
groups of 16 rows, and a mix of 2- and 4-bit layers for about 3.5-3.7 bits per weight.
With `target_bits`, a dense pre-pass measures every layer's sensitivity at every choice
of bits (`compress.quant.sensitivity`: absolute or relative output error, or the measured
KL of the next-token distributions) and `compress.quant.mixed_bits.allocate_bits` spends
the budget where it helps most.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import torch
from torch import nn

from compress.config import register_handler
from compress.errors import CompressError
from compress.linalg import single_threaded
from compress.quant.base import QuantConfig
from compress.quant.engine import quantize_blockwise
from compress.quant.kmeans import kmeans_1d
from compress.quant.mixed_bits import (
    LayerChoices,
    allocate_bits,
    allocation_by_type,
    average_bits,
    output_error,
)
from compress.quant.report import QuantReport
from compress.quant.sensitivity import (
    OutputKL,
    check_sensitivity,
    kl_windows,
    output_energy,
    relative_error,
)
from compress.quant.table_bits import (
    TABLE_ENTRY,
    TABLE_GROUP,
    apply_table_bits,
    check_table_bits,
    table_choices,
)
from compress.stats import HESSIAN, SQ_NORM, LinearStats
from compress.sweep import BlockSweep, Progress
from models.qformat import PaletteQuantized

# Index widths a palettized layer may use (those Core ML's palettization stores, but 1).
PALETTE_BITS = (2, 3, 4, 6, 8)
# benchmarks/mixed_bits_sensitivity.py, SmolLM2-135M at 3.7 bits of 2/4: measured 31.1,
# relative 43.8, absolute 78.4 Wikipedia perplexity (uniform 4-bit 22.7).
DEFAULT_SENSITIVITY = "measured"


@dataclasses.dataclass
class PalettizeConfig(QuantConfig):
    """k-means palettization (arXiv 2407.21075), uniform or mixed bit-width."""

    method: ClassVar[str] = "palettize"

    # Each weight stores a b-bit index into a table of 2^b fp16 values: 2, 3, 4, 6 or 8.
    # Ignored when target_bits is set (then bits_choices are mixed).
    bits: int = 4
    # Output rows sharing one table: 16 in Apple's model, where a 4-bit table costs
    # 16 x 16 bits per 16 rows (~0.005 bits per weight at 3072 inputs) and fits the rows'
    # local range far better than one table per tensor (None).
    group_rows: int | None = 16
    # Lloyd iterations; 1-D k-means settles within a few dozen and stops early once stable.
    iters: int = 20
    # Mixed bit-width: average stored bits per weight over the quantized linears, tables
    # included (e.g. 3.7). Layers whose outputs suffer most get the larger choices.
    # Needs calibration data. None = every layer gets `bits`.
    target_bits: float | None = None
    # The bit-widths mixed under target_bits (Apple mixes 2 and 4).
    bits_choices: tuple[int, ...] = (2, 4)
    # How target_bits judges a layer at each choice (compress.quant.sensitivity):
    # "absolute" output error tr(dW H dW^T)/n, "relative" = that / tr(W H W^T), or
    # "measured" = KL of the next-token distributions with only that layer quantized.
    # The default is the one that gave the lowest perplexity in
    # benchmarks/mixed_bits_sensitivity.py (BENCHMARKS.md).
    sensitivity: str = DEFAULT_SENSITIVITY
    # "measured" runs the model on this many calibration windows of this many tokens,
    # once per layer and choice but the largest: its cost grows with both.
    sensitivity_windows: int = 4
    sensitivity_tokens: int = 256
    # The embedding table and LM head join the mixed-bit budget at one of these widths
    # (round-to-nearest in groups of 32, what `toolkit export --embedding-bits` stores;
    # compress.quant.table_bits), judged by measured KL like the layers. target_bits then
    # averages over the linears and the table. None keeps the table float, outside it.
    table_bits: tuple[int, ...] | None = None
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
        _check_palette_bits("bits", self.bits)
        if isinstance(self.bits_choices, int):
            self.bits_choices = (self.bits_choices,)
        for bits in self.bits_choices:
            _check_palette_bits("bits_choices entry", bits)
        self.bits_choices = tuple(sorted(set(self.bits_choices)))
        if len(self.bits_choices) < 2:
            raise CompressError(f"bits_choices {self.bits_choices} needs at least two "
                                "bit-widths to mix, e.g. (2, 4)")
        if self.group_rows is not None and not _positive_int(self.group_rows):
            raise CompressError(f"group_rows {self.group_rows!r} must be a positive integer "
                                "(16 as in Apple's model) or omitted for one table per tensor")
        if not _positive_int(self.iters):
            raise CompressError(f"iters {self.iters!r} must be a positive integer, e.g. 20")
        if not isinstance(self.weighted, bool):
            raise CompressError(f"weighted {self.weighted!r} must be true or false")
        check_sensitivity(self.sensitivity)
        for knob, example in (("sensitivity_windows", 4), ("sensitivity_tokens", 256)):
            if not _positive_int(getattr(self, knob)):
                raise CompressError(f"{knob} {getattr(self, knob)!r} must be a positive "
                                    f"integer, e.g. {example}")
        if self.target_bits is not None:
            self._check_target()
        if self.table_bits is not None:
            self.table_bits = check_table_bits(self.table_bits)
            if self.target_bits is None or self.sensitivity != "measured":
                raise CompressError("table_bits is a choice of the mixed-bit allocation, "
                                    "judged by measured KL: set target_bits and keep "
                                    "sensitivity measured")

    def _check_target(self) -> None:
        target = self.target_bits
        if isinstance(target, bool) or not isinstance(target, int | float):
            raise CompressError(f"target_bits {target!r} must be a number, e.g. 3.7")
        self.target_bits = float(target)
        low, high = self.bits_choices[0], self.bits_choices[-1]
        if target < low:
            raise CompressError(f"target {target:g} bits is below the smallest choice ({low} "
                                "bits): raise target_bits or add a smaller choice")
        if target > high:
            raise CompressError(f"target {target:g} bits is above the largest choice ({high} "
                                "bits): lower target_bits or add a larger choice")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_palette_bits(what: str, bits: object) -> None:
    if isinstance(bits, bool) or bits not in PALETTE_BITS:
        raise CompressError(f"{what} {bits!r} is not supported by palettize: use one of "
                            f"{', '.join(map(str, PALETTE_BITS))}")


def palettize(weight: torch.Tensor, bits: int, group_rows: int | None, iters: int,
              importance: torch.Tensor | None = None) -> PaletteQuantized:
    """W[r, j] ~= lut[r // g, idx[r, j]] with each lut row the 2^b k-means centroids of its
    g rows (arXiv 2407.21075). `importance` (broadcastable to `weight` [out, in], e.g. the
    Hessian diagonal [in]) weights each weight's squared error. Pruned zeros stay zero."""
    _check_palette_bits("bits", bits)
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


_CACHE_LIMIT_BYTES = 4 << 30


@register_handler(PalettizeConfig)
def palettize_model(model: nn.Module, config: PalettizeConfig, calib: torch.Tensor | None, *,
                    device: str | torch.device = "cpu",
                    forward_dtype: torch.dtype = torch.float32, batch_size: int = 4,
                    progress: Progress | None = None) -> QuantReport:
    """`compress.apply`'s handler. Uniform bits: one sweep (data-free when not weighted).
    Mixed bits: a dense pre-pass measures s_l(b) = tr(dW_b H dW_b^T) / n_tokens for every
    linear l and choice b, `allocate_bits` picks each layer's bits under `target_bits`, and
    the main sweep palettizes every layer at its bits."""
    if config.needs and (calib is None or calib.ndim != 2 or calib.shape[0] == 0):
        fix = ("drop target_bits" if config.target_bits is not None
               else "set weighted: false (--no-weighted) for data-free tables")
        raise CompressError("palettize needs calibration token ids [N, L] for "
                            f"{'target_bits' if config.target_bits is not None else 'weighted'}"
                            f" k-means: pass calibration data or {fix}")
    sweep = BlockSweep(model, calib, torch.device(device), forward_dtype, batch_size, progress)
    if config.target_bits is None:
        return quantize_blockwise(model, config, calib, palettize_weight, sweep=sweep)
    # Data-free k-means gives the pre-pass's palettes again, so keep them (one byte per
    # index per choice) unless that would not fit comfortably in memory.
    cache: dict[tuple[str, int], PaletteQuantized] | None = None
    block_weights = sum(lin.weight.numel() for i in range(sweep.n_blocks)
                        for lin in sweep.layout.block_linears(i).values())
    if not config.weighted and block_weights * len(config.bits_choices) <= _CACHE_LIMIT_BYTES:
        cache = {}
    kl = None
    if config.sensitivity == "measured":
        start = time.perf_counter()
        windows = kl_windows(calib, config.sensitivity_windows, config.sensitivity_tokens)
        kl = OutputKL(model, sweep.layout, windows, sweep.device, forward_dtype, batch_size)
        sweep.seconds["sensitivity_reference"] = time.perf_counter() - start
    layers = measure_sensitivities(sweep, config, cache, kl)
    if config.table_bits is not None:
        start = time.perf_counter()
        layers.append(table_choices(sweep.layout, kl, config.table_bits))
        sweep.seconds["sensitivity_table"] = time.perf_counter() - start
    layer_bits = allocate_bits(layers, config.target_bits)
    table = layer_bits.pop(TABLE_ENTRY, None)
    achieved = average_bits(layers, {**layer_bits, **({TABLE_ENTRY: table} if table else {})})
    main = dataclasses.replace(config, target_bits=None, table_bits=None)  # no Hessian
    per_bits = {bits: dataclasses.replace(main, bits=bits) for bits in config.bits_choices}

    def plan(name: str):
        layer_config = per_bits[layer_bits[name]]
        cached = cache.pop((name, layer_config.bits), None) if cache is not None else None
        if cached is not None:
            return layer_config, lambda _weight, _stats, _config: cached
        return layer_config, palettize_weight

    report = quantize_blockwise(model, main, calib, palettize_weight, sweep=sweep, plan=plan)
    report.calib_tokens = int(calib.numel())
    if table is not None:  # after the sweep: the main pass calibrates on the float table
        apply_table_bits(sweep.layout, table)
    report.allocation = {
        "target_bits": config.target_bits, "achieved_bits": achieved,
        "choices": list(config.bits_choices), "sensitivity_kind": config.sensitivity,
        "layer_bits": layer_bits, "by_type": allocation_by_type(layer_bits),
        "sensitivity": {name: {b: s for b, (s, _) in options.items()}
                        for name, _, options in layers},
    }
    if kl is not None:
        report.allocation["kl_tokens"] = int(kl.tokens.numel())
    if table is not None:
        numel = next(n for name, n, _ in layers if name == TABLE_ENTRY)
        report.allocation.update(table_bits=table, table_weights=numel,
                                 table_group_size=TABLE_GROUP,
                                 table_choices=list(config.table_bits))
    return report


def measure_sensitivities(sweep: BlockSweep, config: PalettizeConfig,
                          cache: dict | None = None,
                          kl: OutputKL | None = None) -> list[LayerChoices]:
    """The dense pre-pass: for every kept linear and every b in `bits_choices`, its
    sensitivity (`config.sensitivity`, see compress.quant.sensitivity; "measured" needs
    `kl`) and stored bits per weight. The model is dense again afterwards.
    With `cache`, each palette is kept under (name, bits) so the main pass need not
    cluster again (valid when clustering ignores the data, i.e. not `weighted`)."""
    start = time.perf_counter()
    method_before = sweep.seconds["method"]
    layers: list[LayerChoices] = []

    largest = config.bits_choices[-1]

    def measure(index: int, linears: dict[str, nn.Linear], stats) -> None:
        for name, linear in linears.items():
            weight = linear.weight.data.float()
            hessian, n_tokens = stats[name].hessian, stats[name].n_tokens
            importance = hessian.diagonal() if config.weighted else None
            energy = output_energy(weight, hessian, n_tokens)
            options = {}
            for bits in config.bits_choices:
                try:
                    with single_threaded():  # many small ops: see compress.linalg
                        palette = palettize(weight, bits, config.group_rows, config.iters,
                                            importance)
                except CompressError as exc:  # the pure function does not know the name
                    raise CompressError(f"{name}: {exc}") from None
                error = output_error(weight, palette.dequantize(), hessian, n_tokens)
                if config.sensitivity == "relative":
                    error = relative_error(error, energy)
                elif config.sensitivity == "measured":
                    error = 0.0 if bits == largest else kl.kl_with(  # type: ignore[union-attr]
                        index, linear, palette.dequantize())
                if cache is not None:
                    cache[(name, bits)] = palette
                options[bits] = (error, 8 * palette.storage_bytes() / weight.numel())
            layers.append((name, weight.numel(), options))

    sweep.run("sensitivity", frozenset({HESSIAN}), lambda n: not config.is_ignored(n), measure)
    sweep.seconds["method"] = method_before  # the pre-pass is reported as "sensitivity"
    sweep.seconds["sensitivity"] = time.perf_counter() - start
    return layers
