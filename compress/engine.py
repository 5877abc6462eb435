"""The block-sequential calibration engine shared by every pruning method.

    capture the inputs of block 0
    for each block i:
        collect the statistics the method needs (hooks on the block's linears)
        prune every linear of the block with the method's pure `prune_weight`
        re-run the pruned block: its outputs are block i+1's inputs

so block i+1 is calibrated on what the already-pruned block i produces (SparseGPT,
arXiv 2301.00774; Wanda, arXiv 2306.11695). Only one block's activations are in memory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import nn

from compress.block_io import capture_block0_inputs, collect_linear_inputs, run_block
from compress.errors import CompressError
from compress.prune.base import PruneConfig, PruneFn
from compress.prune.owl import outlier_ratio, owl_block_sparsities
from compress.prune.wanda import wanda_scores
from compress.stats import SQ_NORM, LinearStats
from models.adapter import DecoderLayout, decoder_layout

# (stage, done, total): e.g. ("prune", 3, 30). The CLI turns it into a progress bar.
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class PruneReport:
    """What the engine did, for the manifest and the benchmark."""

    layer_sparsity: dict[str, float]  # achieved fraction of zeros per pruned linear
    layer_numel: dict[str, int]
    block_targets: list[float]  # requested sparsity per block (uniform or OWL)
    outlier_ratios: list[float] | None  # OWL's per-block outlier ratio, when used
    ignored: list[str]  # linears left dense by --ignore
    calib_tokens: int
    forward_dtype: str
    seconds: dict[str, float]  # capture / forward / method / owl, wall-clock
    # Per block: seconds spent in the method's own math (metric, mask, update).
    block_method_seconds: list[float] = dataclasses.field(default_factory=list)

    @property
    def overall_sparsity(self) -> float:
        """Zeros over all pruned linears' weights (embeddings and head are not counted)."""
        total = sum(self.layer_numel.values())
        zeros = sum(self.layer_sparsity[n] * self.layer_numel[n] for n in self.layer_numel)
        return zeros / total if total else 0.0


@dataclasses.dataclass
class _Run:
    model: nn.Module
    layout: DecoderLayout
    calib: torch.Tensor | None
    batch_size: int
    device: torch.device
    forward_dtype: torch.dtype
    progress: Progress | None
    seconds: dict[str, float]

    def tick(self, stage: str, done: int) -> None:
        if self.progress:
            self.progress(stage, done, len(self.layout.blocks))

    def capture(self):
        start = time.perf_counter()
        inputs = capture_block0_inputs(self.model, self.layout.blocks[0], self.calib,
                                       self.batch_size, self.device)
        self.seconds["capture"] += time.perf_counter() - start
        return inputs

    def forward(self, block, inputs, keep_outputs):
        start = time.perf_counter()
        out = run_block(block, inputs, self.forward_dtype, keep_outputs)
        self.seconds["forward"] += time.perf_counter() - start
        return out


def prune_blockwise(model: nn.Module, config: PruneConfig, calib: torch.Tensor | None,
                    prune_weight: PruneFn, *, device: str | torch.device = "cpu",
                    forward_dtype: torch.dtype = torch.float32, batch_size: int = 4,
                    progress: Progress | None = None) -> PruneReport:
    """Prune every linear inside the decoder blocks of `model` in place."""
    needs_data = bool(config.needs) or config.layerwise == "owl"
    if needs_data and (calib is None or calib.ndim != 2 or calib.shape[0] == 0):
        raise ValueError(f"{config.method} needs calibration token ids of shape [N, L]")
    device = torch.device(device)
    model.to(device)
    run = _Run(model, decoder_layout(model), calib, batch_size, device, forward_dtype,
               progress, dict.fromkeys(("capture", "forward", "method", "owl"), 0.0))
    n_blocks = len(run.layout.blocks)
    ratios = _owl_outlier_ratios(run, config) if config.layerwise == "owl" else None
    targets = (owl_block_sparsities(ratios, config.sparsity, config.owl_lambda) if ratios
               else [config.sparsity] * n_blocks)
    report = PruneReport({}, {}, targets, ratios, [], 0, str(forward_dtype).replace("torch.", ""),
                         run.seconds)
    inputs = run.capture() if config.needs else None
    report.calib_tokens = int(calib.numel()) if needs_data else 0
    for index, block in enumerate(run.layout.blocks):
        linears = run.layout.block_linears(index)
        report.ignored += [name for name in linears if config.is_ignored(name)]
        linears = {n: m for n, m in linears.items() if not config.is_ignored(n)}
        stats = _collect_stats(run, block, linears, inputs, config.needs)
        start = time.perf_counter()
        for name, linear in linears.items():
            _prune_linear(name, linear, stats[name], targets[index], config, prune_weight,
                          report)
        report.block_method_seconds.append(time.perf_counter() - start)
        run.seconds["method"] += report.block_method_seconds[-1]
        if inputs is not None and index + 1 < n_blocks:
            inputs = run.forward(block, inputs, keep_outputs=True)
        run.tick("prune", index + 1)
    return report


def _collect_stats(run: _Run, block: nn.Module, linears: dict[str, nn.Linear],
                   inputs, needs: frozenset[str]) -> dict[str, LinearStats]:
    stats = {name: LinearStats.empty(lin.in_features, needs, run.device)
             for name, lin in linears.items()}
    if needs and linears:
        with collect_linear_inputs(linears, stats):
            run.forward(block, inputs, keep_outputs=False)
    return stats


def _prune_linear(name: str, linear: nn.Linear, stats: LinearStats, sparsity: float,
                  config: PruneConfig, prune_weight: PruneFn, report: PruneReport) -> None:
    weight = linear.weight.data
    try:
        pruned = prune_weight(weight.to(torch.float32), stats, sparsity, config.nm, config)
    except CompressError as exc:  # the pure function does not know the layer's name
        raise CompressError(f"{name}: {exc}") from None
    weight.copy_(pruned.to(weight.dtype))
    report.layer_sparsity[name] = float((weight == 0).float().mean())
    report.layer_numel[name] = weight.numel()


def _owl_outlier_ratios(run: _Run, config: PruneConfig) -> list[float]:
    """OWL's pre-pass (arXiv 2310.05175): the dense model's per-block outlier ratio of
    Wanda scores |W| * ||X||, measured block-sequentially before anything is pruned."""
    start = time.perf_counter()
    needs = frozenset({SQ_NORM})
    inputs = run.capture()
    ratios = []
    for index, block in enumerate(run.layout.blocks):
        linears = {n: m for n, m in run.layout.block_linears(index).items()
                   if not config.is_ignored(n)}
        stats = _collect_stats(run, block, linears, inputs, needs)
        scores = [wanda_scores(lin.weight.data.float(), stats[n].input_norm())
                  for n, lin in linears.items()]
        ratios.append(outlier_ratio(scores, config.owl_m) if scores else 0.0)
        if index + 1 < len(run.layout.blocks):
            inputs = run.forward(block, inputs, keep_outputs=True)
        run.tick("owl", index + 1)
    run.seconds["owl"] = time.perf_counter() - start
    return ratios
