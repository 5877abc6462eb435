"""The main job, for every model family, as functions the CLI and the benchmarks share:
load -> calibration data -> evaluate -> run the recipe's stages -> evaluate -> save.

What differs by family (how calibration data is built, how the model is evaluated, the
manifest's family fields, the summary and the writer) is the family's workflow
(toolkit/workflows/); this module only orders the steps."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import compress
from compress.distill import DistillConfig
from compress.prune import PruneConfig
from compress.quant import QuantConfig
from compress.recovery import LoraConfig, RecoverConfig
from compress.requirements import applicable_methods, unmet_need
from models import LoadedModel
from toolkit.artifacts import save_model_artifact
from toolkit.errors import UserError
from toolkit.lora_data import lora_windows
from toolkit.manifest import library_versions, timestamp
from toolkit.recipe import CalibrationSpec, Recipe
from toolkit.workflows import CalibrationData, Workflow, workflow_for

__all__ = ["CalibrationSpec", "CompressionRun", "Recipe", "run_compression", "save_result"]


def metrics_dict(results) -> dict[str, dict]:
    return {name: result.to_dict() for name, result in results.items()}


@dataclasses.dataclass
class CompressionRun:
    recipe: Recipe
    device: str = "cpu"
    forward_dtype: torch.dtype = torch.float32
    evaluate: bool = True
    progress: Callable[[str, int, int], None] | None = None


@dataclasses.dataclass
class CompressionResult:
    manifest: dict[str, Any]
    quantized: dict  # linear name -> packed form (models.qformat), empty when not quantized
    workflow: Workflow | None = None
    calibration: CalibrationData | None = None


def check_applies(loaded: LoadedModel, recipe: Recipe, workflow: Workflow) -> None:
    """Refuse, before any work, a stage whose method cannot reach this model through the
    adapter it needs (compress/requirements.py), naming the methods that do apply."""
    for config in recipe.stages:
        reason = unmet_need(config, loaded.module)
        if reason is None:
            continue
        usable = applicable_methods(loaded.module)
        hint = (f"use --method {' or '.join(usable)}" if usable
                else "no compression method applies to it")
        raise UserError(f"method {config.method} does not apply to {loaded.source} "
                        f"({workflow.kind}): {reason}; {hint}")
    _check_lora_order(loaded, recipe)


def _check_lora_order(loaded: LoadedModel, recipe: Recipe) -> None:
    """LoRA adapts the linears a quantization or pruning stage of the same recipe
    compressed: the model before that stage is its teacher, so an already compressed input
    (whose "before" is itself compressed) does not count. toolkit/recipe.py makes it last."""
    for index, config in enumerate(recipe.stages):
        if isinstance(config, LoraConfig) and not any(isinstance(c, QuantConfig | PruneConfig)
                                                      for c in recipe.stages[:index]):
            raise UserError(f"lora needs linears compressed by an earlier stage of the recipe "
                            f"(the model before it is the teacher), but {loaded.source} gets "
                            "none: put a quantization (rtn, gptq, awq, palettize) or pruning "
                            "(wanda, sparsegpt, magnitude) stage first, e.g. --method wanda "
                            "... --recover lora")
        if isinstance(config, LoraConfig) and loaded.family != "llm":
            raise UserError(f"lora adapters are stored by the dense LLM family only, and "
                            f"{loaded.source} is a {loaded.family} model: use --recover kd")


def run_compression(loaded: LoadedModel, run: CompressionRun) -> CompressionResult:
    """Run every stage of the recipe on `loaded.module` in place; return the manifest
    (metrics included) and the packed weights of the quantization stage, if any."""
    workflow = workflow_for(loaded)
    check_applies(loaded, run.recipe, workflow)
    data = workflow.calibration(loaded, run.recipe.calibration)
    wants_teacher = any(isinstance(c, DistillConfig | RecoverConfig | LoraConfig)
                        for c in run.recipe.stages)
    # The model as it was before the first stage: a distillation or recovery stage's
    # teacher, and what a family's evaluation compares the compressed model with.
    original = (copy.deepcopy(loaded.module).eval()
                if wants_teacher or (run.evaluate and workflow.compares_with_original)
                else None)
    metrics: dict[str, Any] = {} if data.held_out_description is None \
        else {"held_out": data.held_out_description}
    if run.evaluate:
        metrics["before"] = workflow.evaluate(loaded, None, data, run)
    start = time.perf_counter()
    stages, quantized = _run_stages(loaded, run, data, original)
    compress_seconds = time.perf_counter() - start
    loaded.module.to("cpu").eval()
    if original is not None:  # a distillation stage ran the teacher on the device
        original.to("cpu")
    if run.evaluate:
        metrics["after"] = workflow.evaluate(loaded, original, data, run)
    last = run.recipe.stages[-1].to_dict()
    # format, family and the family's section are added by save_model_artifact.
    manifest = {
        "created": timestamp(),
        "source_model": loaded.source,
        "model_name": loaded.name,
        "recipe": run.recipe.to_dict(),
        "method": {**last, "method": run.recipe.name} if len(stages) > 1 else last,
        "stages": stages,
        "calibration": data.description,
        "engine": {"device": run.device, "forward_dtype": stages[-1]["forward_dtype"],
                   "threads": torch.get_num_threads()},
        "seed": run.recipe.calibration.seed,
        "versions": library_versions(),
        "timing_seconds": {"compress_total": compress_seconds, **_summed_seconds(stages)},
        "metrics": metrics,
    }
    manifest.update(workflow.manifest_fields(loaded, stages, data, run))
    return CompressionResult(manifest, quantized, workflow, data)


def _run_stages(loaded: LoadedModel, run: CompressionRun, data: CalibrationData,
                original: torch.nn.Module | None) -> tuple[list[dict], dict]:
    stages, quantized = [], {}
    pruned: set[str] = set()  # linears a pruning stage of this recipe pruned
    for config in run.recipe.stages:
        stage_start = time.perf_counter()
        extra = {"teacher": original} if isinstance(config, DistillConfig) else {}
        if isinstance(config, RecoverConfig):  # trains the packed forms' scales in place
            extra = {"teacher": original, "quantized": quantized or loaded.quantized or {}}
        if isinstance(config, LoraConfig):  # adapters beside the packed or pruned linears
            train, held = lora_windows(data, config, run.recipe.calibration.file is not None)
            extra = {"teacher": original, "quantized": quantized or loaded.quantized or {},
                     "pruned": sorted(pruned), "train_tokens": train, "held_out_tokens": held}
        report = compress.apply(loaded.module, config, data.inputs, device=run.device,
                                forward_dtype=run.forward_dtype, progress=run.progress,
                                **data.options, **extra)
        section = report.manifest_section()
        stages.append({"method": config.method, "kind": section["kind"],
                       "seconds": {"total": time.perf_counter() - stage_start,
                                   **report.seconds},
                       "forward_dtype": report.forward_dtype, "report": section})
        if section["kind"] in ("quantize", "recover", "lora"):
            quantized = report.quantized
        if section["kind"] == "prune":
            pruned |= set(section["per_layer"])
    return stages, quantized


def _summed_seconds(stages: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for stage in stages:
        for key, value in stage["seconds"].items():
            if key != "total":
                totals[key] = totals.get(key, 0.0) + value
    for key in ("capture", "forward", "method"):
        totals.setdefault(key, 0.0)
    return totals


def save_result(out: Path, loaded: LoadedModel, result: CompressionResult, recipe: Recipe, *,
                overwrite: bool) -> Path:
    """The artifact directory of the model's family (model files, packed when quantized;
    recipe.yaml; toolkit.json), written atomically by the family registry's writer."""
    # The packed form of the quantization stage replaces whatever `loaded` came with,
    # which no longer describes its weights.
    loaded.quantized = result.quantized or None
    raw = result.calibration.raw if result.calibration is not None else None
    if raw is not None and loaded.vision is not None:  # images kept for int8 export
        loaded.vision = dataclasses.replace(loaded.vision, samples=raw)
    return save_model_artifact(out, loaded, result.manifest, recipe_yaml=recipe.to_yaml(),
                               overwrite=overwrite)
