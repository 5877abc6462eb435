"""Expert dropping, criterion x drop ratio x schedule, on any MoE model: shared by the
V-MoE and the upcycled-LM parts of benchmarks/vmoe.py.

Each cell deep-copies the model, runs `toolkit compress`'s method through
`compress.apply` (the same code the CLI runs), and scores the result with the caller's
`evaluate(model) -> float`. Schedules: one-shot, iterative (one expert per round, scores
recomputed in between), and each with knowledge-distillation recovery after every round
(the "lottery" variant of MC-Suite, arXiv 2504.05586). With one expert dropped, the
iterative schedule is the one-shot one, so those cells are not re-run.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import torch
from torch import nn

import compress
from compress.experts import DropExpertsConfig

CRITERIA = ("frequency", "routing-weight", "activation-norm", "router-norm",
            "gradient-entropy", "weight-norm", "reconstruction", "random")
RATIOS = (0.25, 0.5)
SCHEDULES = ("one-shot", "iterative", "one-shot+kd", "iterative+kd")


@dataclasses.dataclass
class GridSettings:
    recover_steps: int
    recover_lr: float
    batch_size: int
    seed: int = 0
    reconstruction_samples: int = 64


def drop_count(ratio: float, experts: int) -> int:
    return max(1, round(ratio * experts))


def run_grid(model: nn.Module, experts: int, calib: torch.Tensor,
             evaluate: Callable[[nn.Module], float], settings: GridSettings,
             criteria=CRITERIA, ratios=RATIOS, schedules=SCHEDULES,
             log: Callable[..., None] = print) -> list[dict]:
    rows = []
    for ratio in ratios:
        count = drop_count(ratio, experts)
        for criterion in criteria:
            cells: dict[str, dict] = {}
            for schedule in schedules:
                iterative = schedule.startswith("iterative")
                if iterative and count == 1:  # one round of one expert = one-shot
                    cells[schedule] = {**cells[schedule.replace("iterative", "one-shot")],
                                       "same_as_one_shot": True}
                    continue
                cells[schedule] = run_cell(model, calib, evaluate, settings, criterion, ratio,
                                           rounds=count if iterative else 1,
                                           recover="kd" if schedule.endswith("kd") else "none")
                log(f"drop {ratio:g} {criterion:16s} {schedule:13s} "
                    f"metric {cells[schedule]['metric']:.4f} "
                    f"({cells[schedule]['seconds']:.0f} s)", flush=True)
            rows.append({"ratio": ratio, "dropped": count, "criterion": criterion,
                         "schedules": cells})
    return rows


def run_cell(model: nn.Module, calib: torch.Tensor, evaluate: Callable[[nn.Module], float],
             settings: GridSettings, criterion: str, ratio: float, *, rounds: int,
             recover: str) -> dict:
    student = copy.deepcopy(model)
    config = DropExpertsConfig(criterion=criterion, drop=ratio, rounds=rounds, recover=recover,
                               recover_steps=settings.recover_steps,
                               recover_lr=settings.recover_lr,
                               batch_size=settings.batch_size, seed=settings.seed,
                               reconstruction_samples=settings.reconstruction_samples)
    start = time.perf_counter()
    report = compress.apply(student, config, calib)
    seconds = time.perf_counter() - start
    student.eval()
    metric = evaluate(student)
    return {"metric": metric, "seconds": seconds,
            "kept": [g["kept"] for g in report.groups],
            "params_after": report.params_after}
