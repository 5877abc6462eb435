"""Pruning on the block-sequential sweep (`compress.sweep`): OWL's optional dense pre-pass
chooses per-block sparsities, then one pass prunes every linear of each block with the
method's pure `prune_weight` (SparseGPT, arXiv 2301.00774; Wanda, arXiv 2306.11695)."""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from compress.errors import CompressError
from compress.prune.base import PruneConfig, PruneFn
from compress.prune.owl import outlier_ratio, owl_block_sparsities
from compress.prune.wanda import wanda_scores
from compress.stats import SQ_NORM, LinearStats
from compress.sweep import BlockSweep, Progress, dtype_name


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

    def manifest_section(self) -> dict:
        return {"kind": "prune", "overall": self.overall_sparsity,
                "per_layer": self.layer_sparsity, "block_targets": self.block_targets,
                "outlier_ratios": self.outlier_ratios, "ignored": self.ignored}


def prune_blockwise(model: nn.Module, config: PruneConfig, calib: torch.Tensor | None,
                    prune_weight: PruneFn, *, device: str | torch.device = "cpu",
                    forward_dtype: torch.dtype = torch.float32, batch_size: int = 4,
                    progress: Progress | None = None) -> PruneReport:
    """Prune every linear inside the decoder blocks of `model` in place."""
    needs_data = bool(config.needs) or config.layerwise == "owl"
    if needs_data and (calib is None or calib.ndim != 2 or calib.shape[0] == 0):
        raise ValueError(f"{config.method} needs calibration token ids of shape [N, L]")
    sweep = BlockSweep(model, calib, torch.device(device), forward_dtype, batch_size, progress)
    sweep.seconds["owl"] = 0.0
    ratios = _owl_outlier_ratios(sweep, config) if config.layerwise == "owl" else None
    targets = (owl_block_sparsities(ratios, config.sparsity, config.owl_lambda) if ratios
               else [config.sparsity] * sweep.n_blocks)
    report = PruneReport({}, {}, targets, ratios, [], 0, dtype_name(forward_dtype),
                         sweep.seconds)
    report.calib_tokens = int(calib.numel()) if needs_data else 0

    def prune_block(index: int, linears: dict[str, nn.Linear], stats) -> None:
        report.ignored += [n for n in sweep.layout.block_linears(index) if n not in linears]
        start = time.perf_counter()
        for name, linear in linears.items():
            _prune_linear(name, linear, stats[name], targets[index], config, prune_weight,
                          report)
        report.block_method_seconds.append(time.perf_counter() - start)

    sweep.run("prune", config.needs, lambda n: not config.is_ignored(n), prune_block)
    return report


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


def _owl_outlier_ratios(sweep: BlockSweep, config: PruneConfig) -> list[float]:
    """OWL's pre-pass (arXiv 2310.05175): the dense model's per-block outlier ratio of
    Wanda scores |W| * ||X||, measured block-sequentially before anything is pruned."""
    start = time.perf_counter()
    method_before = sweep.seconds["method"]
    ratios: list[float] = []

    def measure(_index: int, linears: dict[str, nn.Linear], stats) -> None:
        scores = [wanda_scores(lin.weight.data.float(), stats[n].input_norm())
                  for n, lin in linears.items()]
        ratios.append(outlier_ratio(scores, config.owl_m) if scores else 0.0)

    sweep.run("owl", frozenset({SQ_NORM}), lambda n: not config.is_ignored(n), measure)
    sweep.seconds["method"] = method_before  # the pre-pass is reported as "owl"
    sweep.seconds["owl"] = time.perf_counter() - start
    return ratios
