"""The main job, as functions the CLI and the benchmarks share:
load -> calibration data -> evaluate -> run the recipe's stages -> evaluate -> save."""

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
from models import LoadedModel
from models.load import MOE_LM_FAMILY
from toolkit.data import (
    TokenStreams,
    cached_streams,
    read_calibration_file,
    sample_calibration,
    token_hash,
    tokenize_text,
)
from toolkit.eval import evaluate_perplexities
from toolkit.lm_artifact import block_sparsity, save_lm_artifact
from toolkit.manifest import library_versions, timestamp
from toolkit.recipe import CalibrationSpec, Recipe

__all__ = ["CalibrationSpec", "CompressionRun", "Recipe", "run_compression", "save_result"]


@dataclasses.dataclass
class Calibration:
    tokens: torch.Tensor  # [N, L]
    description: dict[str, Any]


def calibration_tokens(spec: CalibrationSpec, streams: TokenStreams, tokenizer) -> Calibration:
    """N windows of L tokens drawn with `spec.seed` from the Wikipedia pool or `spec.file`."""
    if spec.file is not None:
        pool = tokenize_text(tokenizer, read_calibration_file(spec.file))
        source = str(spec.file)
    else:
        pool, source = streams.calib_pool, "wikipedia (gensim test data, first 90% of tokens)"
    tokens = sample_calibration(pool, spec.samples, spec.seq_len, spec.seed)
    return Calibration(tokens, {"source": source, "samples": spec.samples,
                                "seq_len": spec.seq_len, "seed": spec.seed,
                                "pool_tokens": int(pool.numel()),
                                "tokens_sha256": token_hash(tokens)})


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


def run_compression(loaded: LoadedModel, run: CompressionRun) -> CompressionResult:
    """Run every stage of the recipe on `loaded.module` in place; return the manifest
    (metrics included) and the packed weights of the quantization stage, if any."""
    streams = cached_streams(loaded.tokenizer)
    calib = calibration_tokens(run.recipe.calibration, streams, loaded.tokenizer)
    metrics: dict[str, Any] = {}
    if run.evaluate:
        metrics["before"] = metrics_dict(_evaluate(loaded, streams, run))
    stages, quantization, quantized = [], None, {}
    start = time.perf_counter()
    # A distillation stage learns from the model as it was before the first stage.
    teacher = (copy.deepcopy(loaded.module).eval()
               if any(isinstance(c, DistillConfig) for c in run.recipe.stages) else None)
    for config in run.recipe.stages:
        stage_start = time.perf_counter()
        extra = {"teacher": teacher} if isinstance(config, DistillConfig) else {}
        report = compress.apply(loaded.module, config, calib.tokens, device=run.device,
                                forward_dtype=run.forward_dtype, progress=run.progress,
                                **extra)
        section = report.manifest_section()
        stages.append({"method": config.method, "kind": section["kind"],
                       "seconds": {"total": time.perf_counter() - stage_start,
                                   **report.seconds},
                       "forward_dtype": report.forward_dtype, "report": section})
        if section["kind"] == "quantize":
            quantization, quantized = section, report.quantized
    compress_seconds = time.perf_counter() - start
    loaded.module.to("cpu")
    if run.evaluate:
        metrics["after"] = metrics_dict(_evaluate(loaded, streams, run))
    last = run.recipe.stages[-1].to_dict()
    manifest = {
        "format": "edge-toolkit-artifact/1",
        **_moe_fields(loaded),
        "created": timestamp(),
        "source_model": loaded.source,
        "model_name": loaded.name,
        "recipe": run.recipe.to_dict(),
        "method": {**last, "method": run.recipe.name} if len(stages) > 1 else last,
        "stages": stages,
        "calibration": calib.description,
        "engine": {"device": run.device, "forward_dtype": stages[-1]["forward_dtype"],
                   "threads": torch.get_num_threads()},
        "seed": run.recipe.calibration.seed,
        "versions": library_versions(),
        "sparsity": _sparsity_section(loaded, stages),
        "quantization": quantization,
        "timing_seconds": {"compress_total": compress_seconds,
                           **_summed_seconds(stages)},
        "eval_protocol": run.recipe.protocol.to_dict(),
        "metrics": metrics,
    }
    return CompressionResult(manifest, quantized)


def _moe_fields(loaded: LoadedModel) -> dict[str, Any]:
    """A mixture-of-experts LM's family and per-layer expert counts (how it loads back)."""
    layers = [m for m in loaded.module.modules() if getattr(type(m), "routing_group", False)]
    if not layers:
        return {}
    return {"family": MOE_LM_FAMILY,
            "moe": {"num_experts": max(m.num_experts for m in layers),
                    "top_k": layers[0].top_k, "layers": [m.num_experts for m in layers]}}


def _sparsity_section(loaded: LoadedModel, stages: list[dict]) -> dict[str, Any]:
    """Zeros counted in the final weights (so a later quantization stage is accounted for)
    over the linears a pruning stage pruned (all block linears when none did), plus the
    pruning stage's own per-block targets."""
    _, measured = block_sparsity(loaded.module)
    prune = [s["report"] for s in stages if s["kind"] == "prune"]
    names = list(prune[-1]["per_layer"]) if prune else list(measured)
    numel = {n: m.weight.numel() for n, m in loaded.module.named_modules() if n in names}
    total = sum(numel.values())
    overall = sum(measured[n] * numel[n] for n in names) / total if total else 0.0
    section: dict[str, Any] = {"overall": overall, "per_layer": {n: measured[n] for n in names}}
    if prune:
        section.update({k: prune[-1][k] for k in ("block_targets", "outlier_ratios",
                                                   "ignored")})
    return section


def _summed_seconds(stages: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for stage in stages:
        for key, value in stage["seconds"].items():
            if key != "total":
                totals[key] = totals.get(key, 0.0) + value
    for key in ("capture", "forward", "method"):
        totals.setdefault(key, 0.0)
    return totals


def _evaluate(loaded: LoadedModel, streams: TokenStreams, run: CompressionRun):
    return evaluate_perplexities(loaded.module, streams, run.recipe.protocol,
                                 device=run.device, progress=run.progress)


def save_result(out: Path, loaded: LoadedModel, result: CompressionResult, recipe: Recipe, *,
                overwrite: bool) -> Path:
    """The artifact directory: model files (packed when quantized), recipe.yaml and
    toolkit.json, written atomically."""
    return save_lm_artifact(out, loaded, result.manifest, result.quantized, recipe.to_yaml(),
                            overwrite=overwrite)
