"""A workflow is the per-family part of the one compression job (toolkit/pipeline.py):
how calibration data is built from a recipe's `calibration:` section (token windows for a
language model, images for an image classifier, portraits with soft labels for a
segmenter), how the model is evaluated before and after (perplexity; accuracy, agreement
and KL; mask metrics), which family fields go into the manifest, and how the summary
table reads. Workflows register by the model families they serve, so the job has no
if/else over families: a new family is one workflow module. The artifact is written by
the family registry's writer (toolkit.artifacts.save_model_artifact), the same call for
every family."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import LoadedModel
from models.family import family_named
from toolkit.errors import UserError


@dataclasses.dataclass
class CalibrationData:
    inputs: torch.Tensor  # what compress.apply gets as `calib`: token ids or images
    description: dict[str, Any]  # the manifest's "calibration" section
    # Extra keyword arguments of every stage (e.g. a segmenter's soft labels).
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # What the workflow evaluates on (token streams, held-out images or portraits), and
    # its description for the manifest's metrics (None: nothing to describe).
    held_out: Any = None
    held_out_description: dict[str, Any] | None = None
    # Raw calibration images the artifact keeps for int8 export (a portrait's), or None.
    raw: Any = None
    # The sample count actually used (the family's default when the recipe gave none),
    # written back into the saved recipe so a re-run repeats it.
    samples: int = 0


@dataclasses.dataclass
class Workflow:
    name: str
    # What the model is, in a user's words ("language model", "portrait segmenter").
    kind: str
    # The task it serves (models.family.TASKS): every family registered with that task
    # (`ModelFamily.task`) is calibrated and evaluated by this workflow.
    task: str
    # Whether the family's evaluation compares with the model before compression
    # (agreement, KL), so the job keeps an uncompressed copy.
    compares_with_original: bool
    accepts: Callable[[LoadedModel], bool]
    calibration: Callable[..., CalibrationData]  # (loaded, spec) -> data
    evaluate: Callable[..., dict]  # (loaded, original or None, data, run) -> metrics
    manifest_fields: Callable[..., dict]  # (loaded, stages, data, run) -> extra keys
    summary: Callable[[dict, Path], str]  # (manifest, out) -> text


_WORKFLOWS: list[Workflow] = []


def register_workflow(workflow: Workflow) -> Workflow:
    if any(w.name == workflow.name for w in _WORKFLOWS):
        raise RuntimeError(f"workflow {workflow.name!r} is already registered")
    _WORKFLOWS.append(workflow)
    return workflow


def registered_workflows() -> list[Workflow]:
    return list(_WORKFLOWS)


def workflow_for(loaded: LoadedModel) -> Workflow:
    """The workflow of the task of the model's family when the family registry names it,
    else the first registered workflow that accepts the model (most specific first)."""
    family = getattr(loaded, "family", None)
    if isinstance(family, str):
        task = family_named(family, source=loaded.source).task
        for workflow in _WORKFLOWS:
            if workflow.task == task:
                return workflow
    for workflow in _WORKFLOWS:
        if workflow.accepts(loaded):
            return workflow
    raise UserError(f"{loaded.source}: no compression workflow serves this kind of model "
                    f"(known: {', '.join(w.kind for w in _WORKFLOWS)})")


def last_report(stages: list[dict], kind: str) -> dict | None:
    """The report of the last stage of `kind` (e.g. "channel-prune"), or None."""
    reports = [stage["report"] for stage in stages if stage["kind"] == kind]
    return reports[-1] if reports else None


def timing_line(manifest: dict, out: Path) -> str:
    """The summary's last line: how long compression took and where the artifact is."""
    return (f"compression: {manifest['timing_seconds']['compress_total']:.1f} s; "
            f"output: {out}")
