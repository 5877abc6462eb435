"""Mixed bit-widths on the block-sequential sweep, for every quantizer with
`MixedBitsConfig` knobs (palettize, rtn, gptq):

    1. sensitivity pre-pass (dense): every kept linear l is quantized by the config's
       `trial` at every b in bits_choices and judged (compress.quant.sensitivity):
       s_l(b) = tr(dW H dW^T)/n (absolute), that / tr(W H W^T) (relative), or the
       next-token KL with only l at b bits (measured); q_l(b) = its stored bits per weight
    2. allocation: `compress.quant.mixed_bits.allocate_bits` picks every b_l under
       target_bits (the table and head join as one entry with table_bits)
    3. main pass: the method's own per-layer function at each layer's b_l, block by block
       (`compress.quant.engine.quantize_blockwise` with a per-layer plan)

The allocation's stored bits are exact for the main pass whenever the pre-pass stores
the same tensors per width (same grid / table shapes), which holds for every quantizer
here: q_l(b) depends only on the layer's shape and the width.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn

from compress.errors import CompressError
from compress.linalg import single_threaded
from compress.quant.base import QuantConfig, QuantizeFn
from compress.quant.engine import quantize_blockwise
from compress.quant.mixed_bits import (
    LayerChoices,
    allocate_bits,
    allocation_by_type,
    average_bits,
    output_error,
)
from compress.quant.mixed_config import MixedBitsConfig
from compress.quant.report import QuantReport
from compress.quant.sensitivity import OutputKL, kl_windows, output_energy, relative_error
from compress.quant.table_bits import TABLE_ENTRY, TABLE_GROUP, apply_table_bits, table_choices
from compress.sweep import BlockSweep, Progress
from models.qformat import QuantizedWeight

# The pre-pass's quantized weights are kept for the main pass (one byte per code per
# choice) when the quantizer is data-free, unless that would not fit comfortably.
_CACHE_LIMIT_BYTES = 4 << 30


def check_mixed_calibration(config: QuantConfig, calib: torch.Tensor | None) -> None:
    if calib is None or calib.ndim != 2 or calib.shape[0] == 0:
        raise CompressError(f"{config.method} target_bits needs calibration token ids "
                            "[N, L] for its sensitivity pre-pass: pass calibration data or "
                            "drop target_bits (one --bits for every layer)")


def quantize_mixed(model: nn.Module, config: Any, calib: torch.Tensor,
                   quantize_weight: QuantizeFn, *, sweep: BlockSweep | None = None,
                   device: str | torch.device = "cpu",
                   forward_dtype: torch.dtype = torch.float32, batch_size: int = 4,
                   progress: Progress | None = None) -> QuantReport:
    """Quantize `model` in place at mixed widths (see the module docstring); `config` is a
    QuantConfig with MixedBitsConfig knobs and target_bits set, `quantize_weight` its
    per-layer function. The report carries the `allocation` block for the manifest."""
    assert isinstance(config, MixedBitsConfig) and config.target_bits is not None
    check_mixed_calibration(config, calib)
    if sweep is None:
        sweep = BlockSweep(model, calib, torch.device(device), forward_dtype, batch_size,
                           progress)
    cache: dict[tuple[str, int], QuantizedWeight] | None = None
    block_weights = sum(lin.weight.numel() for i in range(sweep.n_blocks)
                        for lin in sweep.layout.block_linears(i).values())
    if config.trial_is_final and block_weights * len(config.bits_choices) <= _CACHE_LIMIT_BYTES:
        cache = {}
    kl = None
    if config.sensitivity == "measured":
        start = time.perf_counter()
        windows = kl_windows(calib, config.sensitivity_windows, config.sensitivity_tokens)
        kl = OutputKL(model, sweep.layout, windows, sweep.device, sweep.forward_dtype,
                      sweep.batch_size)
        sweep.seconds["sensitivity_reference"] = time.perf_counter() - start
    layers = measure_sensitivities(sweep, config, cache, kl)
    if config.table_bits is not None:
        start = time.perf_counter()
        layers.append(table_choices(sweep.layout, kl, config.table_bits))
        sweep.seconds["sensitivity_table"] = time.perf_counter() - start
    layer_bits = allocate_bits(layers, config.target_bits)
    table = layer_bits.pop(TABLE_ENTRY, None)
    achieved = average_bits(layers, {**layer_bits, **({TABLE_ENTRY: table} if table else {})})
    main = dataclasses.replace(config, target_bits=None, table_bits=None)
    per_bits = {bits: dataclasses.replace(main, bits=bits) for bits in config.bits_choices}

    def plan(name: str):
        layer_config = per_bits[layer_bits[name]]
        cached = cache.pop((name, layer_config.bits), None) if cache is not None else None
        if cached is not None:
            return layer_config, lambda _weight, _stats, _config: cached
        return layer_config, quantize_weight

    report = quantize_blockwise(model, main, calib, quantize_weight, sweep=sweep, plan=plan)
    report.calib_tokens = int(calib.numel())
    if table is not None:  # after the sweep: the main pass calibrates on the float table
        apply_table_bits(sweep.layout, table)
    report.allocation = allocation_section(config, layers, layer_bits, achieved, kl, table)
    return report


def allocation_section(config: Any, layers: list[LayerChoices], layer_bits: dict[str, int],
                       achieved: float, kl: OutputKL | None,
                       table: int | None) -> dict[str, Any]:
    """The manifest's `allocation` block: target, achieved, per-layer bits, per-type
    counts and every sensitivity the allocator saw."""
    allocation: dict[str, Any] = {
        "target_bits": config.target_bits, "achieved_bits": achieved,
        "choices": list(config.bits_choices), "sensitivity_kind": config.sensitivity,
        "layer_bits": layer_bits, "by_type": allocation_by_type(layer_bits),
        "sensitivity": {name: {b: s for b, (s, _) in options.items()}
                        for name, _, options in layers},
    }
    if kl is not None:
        allocation["kl_tokens"] = int(kl.tokens.numel())
    if table is not None:
        numel = next(n for name, n, _ in layers if name == TABLE_ENTRY)
        allocation.update(table_bits=table, table_weights=numel, table_group_size=TABLE_GROUP,
                          table_choices=list(config.table_bits))
    return allocation


def measure_sensitivities(sweep: BlockSweep, config: Any, cache: dict | None = None,
                          kl: OutputKL | None = None) -> list[LayerChoices]:
    """The dense pre-pass: for every kept linear and every b in `bits_choices`, its
    sensitivity (`config.sensitivity`; "measured" needs `kl`) and stored bits per weight
    of `config.trial`'s result. The model is dense again afterwards. With `cache`, each
    result is kept under (name, bits) for the main pass (valid when `trial_is_final`)."""
    start = time.perf_counter()
    method_before = sweep.seconds["method"]
    layers: list[LayerChoices] = []
    largest = config.bits_choices[-1]
    needs = config.prepass_needs

    def measure(index: int, linears: dict[str, nn.Linear], stats) -> None:
        for name, linear in linears.items():
            weight = linear.weight.data.float()
            hessian, n_tokens = stats[name].hessian, stats[name].n_tokens
            energy = (output_energy(weight, hessian, n_tokens)
                      if config.sensitivity == "relative" else 0.0)
            options = {}
            for bits in config.bits_choices:
                try:
                    with single_threaded():  # many small ops: see compress.linalg
                        trial = config.trial(weight, hessian, bits)
                except CompressError as exc:  # the pure function does not know the name
                    raise CompressError(f"{name}: {exc}") from None
                if config.sensitivity == "measured":
                    error = 0.0 if bits == largest else kl.kl_with(  # type: ignore[union-attr]
                        index, linear, trial.dequantize())
                else:
                    error = output_error(weight, trial.dequantize(), hessian, n_tokens)
                    if config.sensitivity == "relative":
                        error = relative_error(error, energy)
                if cache is not None:
                    cache[(name, bits)] = trial
                options[bits] = (error, 8 * trial.storage_bytes() / weight.numel())
            layers.append((name, weight.numel(), options))

    sweep.run("sensitivity", needs, lambda n: not config.is_ignored(n), measure)
    sweep.seconds["method"] = method_before  # the pre-pass is reported as "sensitivity"
    sweep.seconds["sensitivity"] = time.perf_counter() - start
    return layers
