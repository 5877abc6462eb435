"""`channel-prune`: structured pruning of a network's channel groups (models/channel_groups.py;
today the portrait network's inverted-residual expansions).

Score every channel of every group (compress/structured/
channel_importance.py: bn-scale arXiv 1708.06519, l1-filter arXiv 1608.08710, taylor arXiv
1906.10771, random), decide per-block widths for the requested share of channels removed
(uniform or one global ranking with a per-block floor; widths rounded to multiples of 8),
keep the top channels of each block and let the network rebuild itself smaller
(`keep_channels`, the protocol's surgery). Then, optionally, recover by
distilling from the unpruned model (Hinton et al., arXiv 1503.02531; per-pixel KL over
the 3-class softmax, compress/structured/segmentation_distill.py).

Unlike unstructured zeros, removed channels shrink every tensor they touched (expand
rows, depthwise filters, project columns), so the exported file is smaller and every
runtime runs fewer multiply-adds with no sparse kernel needed.

`compress.apply(model, config, images, labels=soft_labels)` prunes `model` in place: the
smaller network's modules and config replace the old ones, so a recipe's later stages
and the caller's reference see the pruned network. Only the protocol is imported here,
never a model class.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, ClassVar

import torch
from torch import nn

from compress.config import MethodConfig, register_handler
from compress.distill import DistillConfig
from compress.errors import CompressError
from compress.structured import allocation
from compress.structured.channel_importance import (
    GLOBALLY_COMPARABLE,
    bn_scale_scores,
    l1_filter_scores,
    random_scores,
    taylor_scores,
)
from compress.structured.collect import BlockTensors, add_gate_gradients, block_tensors
from compress.structured.segmentation_distill import distill_segmentation
from models.channel_groups import ChannelPrunable, channel_prunable, flops_per_channel
from models.errors import ModelError

CHANNEL_CRITERIA = ("taylor", "bn-scale", "l1-filter", "random")
ALLOCATIONS = ("uniform", "global", "global-flops")
RECOVER_CHOICES = ("none", "kd")


@dataclasses.dataclass
class ChannelPruneConfig(MethodConfig):
    method: ClassVar[str] = "channel-prune"
    adapter: ClassVar[str | None] = "channel_groups"

    # How hidden channels are ranked (compress.structured.channel_importance). taylor
    # reads gradients of the task loss on calibration images (soft labels when given,
    # else the model's own prediction); bn-scale and l1-filter read weights only; random
    # is the control. An untrained network's norms are all 1: bn-scale then ties.
    criterion: str = "taylor"
    # Fraction of all expansion channels to remove, in (0, 1); rounding the widths to
    # round_to moves the achieved share a little (the report gives both).
    sparsity: float = 0.5
    # "uniform": every block loses the same share (latency falls predictably, no block
    # becomes a bottleneck); "global": one ranking over all blocks (network slimming's
    # way), so blocks the criterion finds redundant lose more; "global-flops": least
    # score per FLOP first, and `sparsity` is then the share of expansion FLOPs removed
    # (allocation.py says why a plain global ranking saves little time). Measured once on
    # a trained width-0.5 portrait-256 cut to ~78 of 141 MFLOPs with taylor: held-out mIoU
    # 0.47 uniform vs 0.60 global-flops one-shot, 0.79 vs 0.80 after 100 KD steps (0.83
    # dense). Uniform stays the default: `sparsity` then means channels, as it says.
    allocation: str = "uniform"
    # With a global allocation: every block keeps at least this share of its channels.
    min_keep: float = 0.25
    # Kept widths are multiples of this (phones vector-load 8 or 16 lanes: a width of 41
    # runs like 48); 1 = exact counts.
    round_to: int = 8
    # "kd": fine-tune the pruned network by distilling from the unpruned one.
    recover: str = "none"
    recover_steps: int = 100
    # AdamW's first steps move every weight by about lr whatever its gradient, so a large
    # lr first undoes a prune that was already close (fake-portrait, Taylor at 0.5: held-
    # out KL 1e-4 -> 0.11 after 5 steps at 1e-3, -> 0.007 at 3e-4); a small one recovers
    # a damaging prune slowly (random at 0.5, 100 steps: KL 0.37 -> 0.002 at 1e-3, 0.005
    # at 3e-4, 0.009 at 1e-4). 3e-4 is the middle.
    recover_lr: float = 3e-4
    # Softmax temperature of the per-pixel KL; the 3-class maps are confident almost
    # everywhere but at the contour, and T = 2 exposes the teacher's doubt there.
    recover_temperature: float = 2.0
    # Weight of the KL term; 1 - alpha goes to the task loss on soft labels when the
    # caller passes them. 1.0 = pure KD: reproduce the unpruned model, which needs no
    # labels and does not pull a model trained on other data towards the synthetic set.
    recover_alpha: float = 1.0
    # Images per calibration batch (taylor) and per distillation step.
    batch_size: int = 8
    # Seeds the random criterion and the distillation order.
    seed: int = 0

    def __post_init__(self) -> None:
        choices = [("criterion", CHANNEL_CRITERIA), ("allocation", ALLOCATIONS),
                   ("recover", RECOVER_CHOICES)]
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise CompressError(f"{name} {getattr(self, name)!r} is unknown: choose one "
                                    f"of {', '.join(allowed)}")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float) \
                or not 0 < self.sparsity < 1:
            raise CompressError(f"sparsity {self.sparsity!r} must be a fraction in (0, 1): the "
                                "share of expansion channels to remove, e.g. 0.5")
        for name in ("round_to", "recover_steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CompressError(f"{name} {value!r} must be an integer >= 1")
        checks = [("min_keep", 0 < self.min_keep <= 1, "in (0, 1]"),
                  ("recover_lr", self.recover_lr > 0, "> 0, e.g. 1e-3"),
                  ("recover_temperature", self.recover_temperature > 0, "> 0, e.g. 2.0"),
                  ("recover_alpha", 0 <= self.recover_alpha <= 1, "in [0, 1] (1 = pure KD)")]
        for name, ok, need in checks:
            if not ok:
                raise CompressError(f"{name} {getattr(self, name)!r} must be {need}")


@dataclasses.dataclass
class ChannelPruneReport:
    blocks: list[dict[str, Any]]  # name, hidden_before, hidden_after, kept channel indices
    sparsity: dict[str, float]  # requested, achieved (share of expansion channels removed)
    params_before: int
    params_after: int
    flops_before: int  # one image, deployed graph (the network's `flops()`)
    flops_after: int
    recovery: dict[str, Any] | None  # the distillation report, when recovering
    seconds: dict[str, float]
    forward_dtype: str = "float32"

    def manifest_section(self) -> dict:
        return {"kind": "channel-prune", "blocks": self.blocks, "sparsity": self.sparsity,
                "params_before": self.params_before, "params_after": self.params_after,
                "flops_before": self.flops_before, "flops_after": self.flops_after,
                "recovery": self.recovery}


@register_handler(ChannelPruneConfig)
def channel_prune_handler(model: nn.Module, config: ChannelPruneConfig,
                          calib: torch.Tensor | None, *, labels: torch.Tensor | None = None,
                          progress=None, **_options: Any) -> ChannelPruneReport:
    """Score, choose widths, rebuild in place and (optionally) recover. `calib`:
    normalised images [N, 3, H, W]; `labels`: soft labels [N, 3, H, W] or None."""
    network = checked_prunable(model)
    if config.recover == "kd" and (calib is None or calib.shape[0] == 0):
        raise CompressError("--recover kd needs calibration images to distil on")
    teacher = copy.deepcopy(network).eval() if config.recover == "kd" else None
    before = _size(network)
    start = time.perf_counter()
    blocks = [group.name for group in network.channel_groups()]
    scores = channel_scores(network, config, calib, labels, progress)
    costs = flops_per_channel(network) if config.allocation == "global-flops" else None
    widths = choose_widths(scores, config, costs)
    keep = {name: allocation.keep_indices(scores[name], widths[name]) for name in blocks}
    try:
        network.keep_channels(keep)
    except ModelError as exc:
        raise CompressError(str(exc)) from None
    seconds = {"statistics": time.perf_counter() - start, "recover": 0.0}
    recovery = None
    if teacher is not None:
        start = time.perf_counter()
        recovery = _recover(network, teacher, calib, labels, config, progress)
        seconds["recover"] = time.perf_counter() - start
    after = _size(network.eval())
    total = sum(s.numel() for s in scores.values())
    log = [{"name": name, "hidden_before": scores[name].numel(),
            "hidden_after": widths[name], "kept": keep[name]} for name in blocks]
    achieved = 1 - sum(widths.values()) / total
    return ChannelPruneReport(log, {"requested": config.sparsity, "achieved": achieved},
                              before[0], after[0], before[1], after[1], recovery, seconds)


def checked_prunable(model: nn.Module) -> ChannelPrunable:
    try:
        return channel_prunable(model)
    except ModelError as exc:  # the same one-line message, in compress's error type
        raise CompressError(f"channel-prune: {exc}") from None


def channel_scores(model: ChannelPrunable, config: ChannelPruneConfig,
                   calib: torch.Tensor | None, labels: torch.Tensor | None,
                   progress=None) -> dict[str, torch.Tensor]:
    """Group name -> score per channel under `config.criterion`."""
    groups = checked_prunable(model).channel_groups()
    tensors = block_tensors(groups)
    if config.criterion == "taylor":
        add_gate_gradients(model, groups, tensors, calib, labels, config.batch_size,
                           progress)
    return {name: _score(t, config, index) for index, (name, t) in enumerate(tensors.items())}


def _score(t: BlockTensors, config: ChannelPruneConfig, index: int) -> torch.Tensor:
    if config.criterion == "bn-scale":
        return bn_scale_scores(t.gamma)
    if config.criterion == "l1-filter":
        return l1_filter_scores(t.expand_weight)
    if config.criterion == "random":
        return random_scores(t.gamma.numel(), config.seed * 1000 + index)
    return taylor_scores(t.gate_gradients)


def choose_widths(scores: dict[str, torch.Tensor], config: ChannelPruneConfig,
                  costs: dict[str, float] | None = None) -> dict[str, int]:
    """Kept width per block under `config.allocation` (compress/structured/allocation.py);
    `costs`: FLOPs per hidden channel of each block, needed by "global-flops"."""
    if config.allocation == "uniform":
        hidden = {name: s.numel() for name, s in scores.items()}
        return allocation.uniform_widths(hidden, config.sparsity, config.round_to)
    ranked = scores if config.criterion in GLOBALLY_COMPARABLE \
        else allocation.normalised_by_block_mean(scores)
    if config.allocation == "global-flops":
        if costs is None:
            raise CompressError("allocation global-flops needs the FLOPs per channel")
        return allocation.flop_weighted_widths(ranked, costs, config.sparsity,
                                               config.round_to, config.min_keep)
    return allocation.global_widths(ranked, config.sparsity, config.round_to, config.min_keep)


def _recover(model, teacher, calib, labels, config: ChannelPruneConfig, progress) -> dict:
    """Distil, and keep the pruned weights as they were if the held-out KL got worse:
    recovery must not leave the student further from the teacher than pruning did."""
    kd = DistillConfig(steps=config.recover_steps, lr=config.recover_lr,
                       temperature=config.recover_temperature, alpha=config.recover_alpha,
                       batch_size=config.batch_size, seed=config.seed)
    before = copy.deepcopy(model.state_dict())
    report = distill_segmentation(model, teacher, calib, kd, soft_labels=labels,
                                  eval_images=calib[:config.batch_size], progress=progress)
    reverted = report.final_kl > report.initial_kl
    if reverted:
        model.load_state_dict(before)
    return {**report.manifest_section(), "temperature": config.recover_temperature,
            "alpha": config.recover_alpha, "lr": config.recover_lr, "reverted": reverted}


def _size(model: ChannelPrunable) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters()), model.flops()
