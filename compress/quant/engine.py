"""Quantization on the block-sequential sweep (`compress.sweep`).

Each linear of block i is quantized by the method's pure function; its dequantized weight
is written back at once, so block i+1 is calibrated on what the quantized block i
produces (GPTQ, arXiv 2210.17323). The packed form is kept for the artifact. Zeros that
an earlier pruning stage left must still be zeros afterwards; the engine checks it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from compress.errors import CompressError
from compress.linalg import single_threaded
from compress.quant.base import QuantConfig, QuantizeFn
from compress.quant.report import QuantReport
from compress.stats import LinearStats
from compress.sweep import BlockSweep, Progress, dtype_name
from models.qformat import QuantizedWeight


def quantize_blockwise(model: nn.Module, config: QuantConfig, calib: torch.Tensor | None,
                       quantize_weight: QuantizeFn, *, device: str | torch.device = "cpu",
                       forward_dtype: torch.dtype = torch.float32, batch_size: int = 4,
                       progress: Progress | None = None,
                       plan: Callable[[str], tuple[QuantConfig, QuantizeFn]] | None = None,
                       sweep: BlockSweep | None = None) -> QuantReport:
    """Quantize every linear inside the decoder blocks of `model` in place.

    `plan(name)` may give a layer its own config and function (mixed-bit allocation)."""
    if sweep is None:
        sweep = BlockSweep(model, calib, torch.device(device), forward_dtype, batch_size,
                           progress)
    report = QuantReport(config.method, {}, [], int(calib.numel()) if config.needs else 0,
                         dtype_name(forward_dtype), sweep.seconds)

    def quantize_block(index: int, linears: dict[str, nn.Linear], stats) -> None:
        report.ignored += [n for n in sweep.layout.block_linears(index) if n not in linears]
        for name, linear in linears.items():
            layer_config, layer_fn = plan(name) if plan else (config, quantize_weight)
            report.quantized[name] = quantize_linear(name, linear, stats[name], layer_config,
                                                     layer_fn)

    start = time.perf_counter()
    sweep.run("quantize", config.needs, lambda n: not config.is_ignored(n), quantize_block)
    sweep.seconds["quantize_total"] = time.perf_counter() - start
    return report


def quantize_linear(name: str, linear: nn.Linear, stats: LinearStats, config: QuantConfig,
                    quantize_weight: QuantizeFn) -> QuantizedWeight:
    """Quantize one linear, write its dequantized weight back, return the stored form."""
    weight = linear.weight.data
    try:
        # The per-layer math is many small ops: one thread avoids fork/join costs that
        # dominate on small CPUs (see compress.linalg.single_threaded).
        with single_threaded():
            quantized = quantize_weight(weight.to(torch.float32), stats, config)
    except CompressError as exc:  # the pure function does not know the layer's name
        raise CompressError(f"{name}: {exc}") from None
    dequantized = quantized.dequantize()
    if bool(((weight == 0) & (dequantized != 0)).any()):
        raise CompressError(f"{name}: {config.method} turned pruned zeros into non-zeros")
    weight.copy_(dequantized.to(weight.dtype))
    return quantized
