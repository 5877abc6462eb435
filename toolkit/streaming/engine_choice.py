"""Which engine a job runs on, decided before any weight is read.

`--engine memory` loads the whole model (fp32) and runs each stage over it; `--engine
streaming` reads one decoder block at a time (toolkit/streaming/job.py). `auto` streams a
decoder LM whose fp32 weights and calibration activations would not fit the memory budget
(`--memory-budget GB`, default half of the memory available now), and keeps small models
in memory, where every method (OWL, mixed bit-widths, NNCF, expert dropping, whole-model
distillation) is available. Whole-model distillation above the budget is refused with a
pointer to the block-wise `recover` stage, which fits the streaming bound.
"""

from __future__ import annotations

import argparse

from compress.distill import DistillConfig
from models.errors import ModelError
from models.load import family_of
from toolkit.errors import UserError
from toolkit.recipe import Recipe
from toolkit.streaming.memory import (
    GIB,
    default_budget,
    distill_bytes,
    export_in_memory_bytes,
    gib,
    in_memory_bytes,
)

ENGINES = ("auto", "memory", "streaming")
STREAMABLE_FAMILY = "llm"  # dense decoder LMs; MoE LMs and image models stay in memory


def add_engine_options(p: argparse.ArgumentParser,
                       streaming: str = "one decoder block at a time (bounded memory, "
                                        "resumable after a crash)") -> None:
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help=f"memory: load the whole model; streaming: {streaming}; auto: "
                        "streaming when the model does not fit --memory-budget (default: "
                        "%(default)s)")
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="memory the job may use, in GB (default: half of what is available "
                        "now); decides --engine auto and whether whole-model distillation "
                        "may run")


def budget_bytes(args: argparse.Namespace) -> int:
    value = getattr(args, "memory_budget", None)
    if value is None:
        return default_budget()
    if not value > 0:
        raise UserError(f"--memory-budget {value} must be a positive number of GB, e.g. 4")
    return int(value * GIB)


def choose_engine(recipe: Recipe, model_spec: str, args: argparse.Namespace) -> str:
    """"memory" or "streaming" for this job; refuses distillation above the budget."""
    choice = getattr(args, "engine", "memory")
    family = family_of(model_spec)
    streamable = family is not None and family.name == STREAMABLE_FAMILY
    if choice == "streaming" and not streamable:
        raise UserError(f"--engine streaming reads dense decoder LMs block by block; "
                        f"{model_spec} is not one: use --engine memory")
    if choice == "memory" and not _has_distill(recipe):
        return "memory"
    if not streamable:
        return "memory"
    n_params, hidden = _shape(model_spec)
    if n_params is None:
        return "memory" if choice != "streaming" else choice
    budget = budget_bytes(args)
    if _has_distill(recipe) and distill_bytes(n_params) > budget:
        raise UserError(
            f"whole-model distillation of {model_spec} needs about {gib(distill_bytes(n_params))} "
            f"(student, gradients, two Adam moments and the teacher in fp32) but the memory "
            f"budget is {gib(budget)}: use the block-wise recovery stage instead "
            "(method: recover), which needs one block at a time")
    if choice != "auto":
        return choice
    calib_tokens = (recipe.calibration.samples or 32) * recipe.calibration.seq_len
    return "streaming" if in_memory_bytes(n_params, calib_tokens, hidden) > budget else "memory"


def is_streamable(model_spec: str, choice: str) -> bool:
    """Whether `model_spec` is a dense decoder LM (read block by block); `--engine
    streaming` on anything else is refused in one line."""
    family = family_of(model_spec)
    streamable = family is not None and family.name == STREAMABLE_FAMILY
    if choice == "streaming" and not streamable:
        raise UserError(f"--engine streaming reads dense decoder LMs block by block; "
                        f"{model_spec} is not one: use --engine memory")
    return streamable


def _has_distill(recipe: Recipe) -> bool:
    return any(isinstance(c, DistillConfig) for c in recipe.stages)


def _shape(model_spec: str) -> tuple[int | None, int]:
    """(parameter count, hidden size) from headers alone; (None, 0) when the model exists
    only in memory."""
    from models.lazy.open import open_lazy

    try:
        lazy = open_lazy(model_spec)
    except ModelError:
        return None, 0
    try:
        infos = lazy.source.infos()
        n_params = sum(_numel(i.shape) for i in infos.values())
        return n_params, int(getattr(lazy.config, "hidden_size", 0))
    finally:
        lazy.source.close()


def _numel(shape) -> int:
    total = 1
    for n in shape:
        total *= n
    return total


def choose_export_engine(model_spec: str, args: argparse.Namespace, target: str,
                         target_streams: bool) -> str:
    """"memory" or "streaming" for `toolkit export TARGET`. A target that reads weights a
    part at a time (`target_streams`: ONNX by weight, Core ML and LiteRT by chunk of layers) reads a
    dense decoder LM lazily when its in-memory export would exceed the budget; any other
    target above the budget is refused in one line rather than run out of memory half-way
    (`--engine memory` overrides)."""
    choice = getattr(args, "engine", "memory")
    budget = budget_bytes(args)  # a bad --memory-budget is refused whichever engine runs
    streamable = is_streamable(model_spec, choice)
    if choice == "streaming":
        if not target_streams:
            raise UserError(f"the {target} exporter converts the whole model in memory: use "
                            "--engine memory, or export to onnx, coreml or tflite, which stream")
        return "streaming"
    if choice == "memory" or not streamable:
        return "memory"
    n_params, _ = _shape(model_spec)
    if n_params is None:
        return "memory"
    needed = export_in_memory_bytes(n_params)
    if needed <= budget:
        return "memory"
    if target_streams:
        return "streaming"
    raise UserError(f"exporting {model_spec} to {target} in memory needs about {gib(needed)} "
                    f"but the memory budget is {gib(budget)}: export it to onnx (one weight at "
                    "a time) or coreml (one chunk of layers at a time), or pass --engine "
                    "memory or a larger --memory-budget")
