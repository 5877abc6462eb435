"""`drop-experts`: remove the least important experts of every routing group, one-shot or
over K rounds, optionally recovering with knowledge distillation after each round.

MC-Suite (Jaiswal et al., arXiv 2504.05586): score the experts of each MoE layer, drop the
r lowest, delete their router rows, the same r in every layer; iterative dropping removes
r/K per round and re-scores in between, and the "lottery" variant fine-tunes briefly
after each round. Here the fine-tune is distillation from the model before dropping
(Hinton et al., arXiv 1503.02531; `compress.distill`). The criteria are the pure functions
of `compress.experts.criteria`; `reconstruction` is NAEE's subset search
(arXiv 2402.14800). The model is reached only through `models.moe_groups`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, ClassVar

import torch
from torch import nn

from compress.config import MethodConfig, register_handler
from compress.distill import DistillConfig, classifier_forward, distill, lm_forward
from compress.errors import CompressError
from compress.experts.collect import collect_stats, is_token_batch, reconstruction_fn
from compress.experts.criteria import (
    CRITERIA,
    best_subset_by_reconstruction,
    experts_to_keep,
    iterative_schedule,
)
from models.moe_groups import MoeGroup, moe_groups

CRITERION_CHOICES = (*CRITERIA, "reconstruction")
RECOVER_CHOICES = ("none", "kd")
# Which statistics each criterion reads (routing records, gradients); weight-only
# criteria need no calibration forward at all.
_NEEDS_ROUTING = {"frequency", "routing-weight", "activation-norm"}
_NEEDS_GRADS = {"gradient-entropy"}


@dataclasses.dataclass
class DropExpertsConfig(MethodConfig):
    method: ClassVar[str] = "drop-experts"
    adapter: ClassVar[str | None] = "moe_groups"

    # How experts are ranked (compress.experts.criteria); `reconstruction` searches the
    # kept subset that best reproduces the layer's output (NAEE); `random` is the control.
    criterion: str = "frequency"
    # Fraction of each routing group's experts to remove, in (0, 1): 0.25 of 8 drops 2.
    # Rounded to the nearest count; at least one expert is dropped and top_k stay.
    drop: float = 0.25
    # K: 1 = one-shot; K > 1 drops about drop/K per round and re-scores in between.
    rounds: int = 1
    # "kd": after each round, distil from the model before dropping (the teacher).
    recover: str = "none"
    # Distillation steps after each round (MC-Suite's lottery fine-tune is short).
    recover_steps: int = 100
    recover_lr: float = 1e-4
    # Rows per calibration forward and per distillation step.
    batch_size: int = 8
    # Calibration rows the reconstruction search runs each candidate subset on (it runs
    # 1 + C(E, E - r) candidates per group, so it uses a slice of the calibration set).
    reconstruction_samples: int = 64
    # Seeds the random criterion (plus the group index) and the distillation order.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.criterion not in CRITERION_CHOICES:
            raise CompressError(f"criterion {self.criterion!r} is unknown: choose one of "
                                f"{', '.join(CRITERION_CHOICES)}")
        if not isinstance(self.drop, int | float) or not 0 < self.drop < 1:
            raise CompressError(f"drop {self.drop!r} must be a fraction in (0, 1), e.g. 0.25")
        if self.recover not in RECOVER_CHOICES:
            raise CompressError(f"recover {self.recover!r} must be one of "
                                f"{', '.join(RECOVER_CHOICES)}")
        for name in ("rounds", "recover_steps", "batch_size", "reconstruction_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CompressError(f"{name} {value!r} must be an integer >= 1")
        if not self.recover_lr > 0:
            raise CompressError(f"recover_lr {self.recover_lr!r} must be > 0, e.g. 1e-4")

    def experts_to_drop(self, num_experts: int, top_k: int) -> int:
        count = max(1, round(self.drop * num_experts))
        if num_experts - count < top_k:
            raise CompressError(f"dropping {count} of {num_experts} experts leaves fewer than "
                                f"top_k = {top_k}: use a smaller --drop")
        if self.rounds > count:
            raise CompressError(f"--rounds {self.rounds} exceeds the {count} experts dropped "
                                f"per group (each round drops at least one): use --rounds "
                                f"{count} or fewer")
        return count


@dataclasses.dataclass
class DropExpertsReport:
    groups: list[dict[str, Any]]  # per group: name, experts before, kept/dropped ids, scores
    params_before: int
    params_after: int
    recovery: list[dict[str, Any]]  # one distillation report per round, when recovering
    forward_dtype: str
    seconds: dict[str, float]

    def manifest_section(self) -> dict:
        return {"kind": "drop-experts", "groups": self.groups,
                "params_before": self.params_before, "params_after": self.params_after,
                "recovery": self.recovery}


@register_handler(DropExpertsConfig)
def drop_experts_handler(model: nn.Module, config: DropExpertsConfig,
                         calib: torch.Tensor | None, *, device: str | torch.device = "cpu",
                         progress=None, **_options: Any) -> DropExpertsReport:
    """Score, drop and (optionally) recover, `config.rounds` times, in place."""
    groups = _checked_groups(model)
    counts = [config.experts_to_drop(g.num_experts, g.top_k) for g in groups]
    schedules = [iterative_schedule(g.num_experts, n, config.rounds)
                 for g, n in zip(groups, counts, strict=True)]
    if config.recover == "kd" and calib is None:
        raise CompressError("--recover kd needs calibration data to distil on")
    teacher = copy.deepcopy(model).eval() if config.recover == "kd" else None
    params_before = sum(p.numel() for p in model.parameters())
    original = [list(range(g.num_experts)) for g in groups]
    log = [{"name": g.name, "experts_before": g.num_experts, "rounds": []} for g in groups]
    seconds = {"statistics": 0.0, "recover": 0.0}
    recovery = []
    model.to(device)
    for round_index in range(config.rounds):
        start = time.perf_counter()
        for i, keep, scores in _choose(model, groups, config, calib, schedules, round_index,
                                       device, progress):
            log[i]["rounds"].append({"scores": scores, "kept": [original[i][e] for e in keep]})
            original[i] = [original[i][e] for e in keep]
        seconds["statistics"] += time.perf_counter() - start
        if teacher is not None:
            start = time.perf_counter()
            recovery.append(_recover(model, teacher, calib, config, round_index, progress))
            seconds["recover"] += time.perf_counter() - start
    for i, entry in enumerate(log):
        entry["kept"] = original[i]
        entry["dropped"] = sorted(set(range(entry["experts_before"])) - set(original[i]))
    return DropExpertsReport(log, params_before, sum(p.numel() for p in model.parameters()),
                             recovery, "float32", seconds)


def _checked_groups(model: nn.Module) -> list[MoeGroup]:
    try:
        return moe_groups(model)
    except Exception as exc:  # ModelError from models/: the same one-line message
        raise CompressError(str(exc)) from None


def _choose(model, groups, config, calib, schedules, round_index, device, progress):
    """Yield (group index, kept experts in current numbering, scores or None) per group,
    applying each group's drop as soon as it is chosen. The criteria score every group
    from one calibration pass (MC-Suite); the reconstruction search goes group by group,
    so a later layer's inputs already reflect the earlier layers' drops (as NAEE does)."""
    if config.criterion == "reconstruction":
        rows = calib[:config.reconstruction_samples] if calib is not None else None
        if rows is None:
            raise CompressError("criterion 'reconstruction' needs calibration data")
        for i, group in enumerate(groups):
            drop = schedules[i][round_index]
            fn = reconstruction_fn(model, group, rows, batch_size=config.batch_size,
                                   device=device)
            keep = best_subset_by_reconstruction(fn, group.num_experts,
                                                 group.num_experts - drop)
            group.keep_only(keep)
            yield i, keep, None
        return
    stats = collect_stats(model, groups, calib, batch_size=config.batch_size,
                          need_routing=config.criterion in _NEEDS_ROUTING,
                          need_grads=config.criterion in _NEEDS_GRADS,
                          seed=config.seed + 1000 * round_index, device=device,
                          progress=progress)
    for i, (group, s) in enumerate(zip(groups, stats, strict=True)):
        scores = CRITERIA[config.criterion](s)
        keep = experts_to_keep(scores, schedules[i][round_index])
        group.keep_only(keep)
        yield i, keep, [float(v) for v in scores]


def _recover(model, teacher, calib, config, round_index, progress) -> dict:
    forward = lm_forward if is_token_batch(calib) else classifier_forward
    kd = DistillConfig(steps=config.recover_steps, lr=config.recover_lr,
                       batch_size=config.batch_size, seed=config.seed + round_index)
    held_out = calib[:config.batch_size]
    report = distill(model, teacher, calib, kd, forward=forward, eval_batch=held_out,
                     progress=progress)
    return report.manifest_section()
