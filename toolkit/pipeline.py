"""The main job, as functions the CLI and the benchmarks share:
load -> calibration data -> evaluate -> compress -> evaluate -> save."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import compress
from compress.config import MethodConfig
from models import LoadedModel
from toolkit.artifacts import save_artifact
from toolkit.data import (
    TokenStreams,
    cached_streams,
    read_calibration_file,
    sample_calibration,
    token_hash,
    tokenize_text,
)
from toolkit.eval import EvalProtocol, evaluate_perplexities
from toolkit.manifest import library_versions, timestamp


@dataclasses.dataclass(frozen=True)
class CalibrationSpec:
    samples: int = 32
    seq_len: int = 512
    seed: int = 0
    file: Path | None = None  # a user's text/JSONL instead of the Wikipedia pool


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
    config: MethodConfig
    calibration: CalibrationSpec
    protocol: EvalProtocol
    device: str = "cpu"
    forward_dtype: torch.dtype = torch.float32
    evaluate: bool = True
    progress: Callable[[str, int, int], None] | None = None


def run_compression(loaded: LoadedModel, run: CompressionRun) -> dict[str, Any]:
    """Compress `loaded.module` in place; return the manifest (metrics included)."""
    streams = cached_streams(loaded.tokenizer)
    calib = calibration_tokens(run.calibration, streams, loaded.tokenizer)
    metrics: dict[str, Any] = {}
    if run.evaluate:
        metrics["before"] = metrics_dict(_evaluate(loaded, streams, run))
    start = time.perf_counter()
    report = compress.apply(loaded.module, run.config, calib.tokens, device=run.device,
                            forward_dtype=run.forward_dtype, progress=run.progress)
    compress_seconds = time.perf_counter() - start
    loaded.module.to("cpu")
    if run.evaluate:
        metrics["after"] = metrics_dict(_evaluate(loaded, streams, run))
    return {
        "format": "edge-toolkit-artifact/1",
        "created": timestamp(),
        "source_model": loaded.source,
        "model_name": loaded.name,
        "recipe": [run.config.to_dict()],
        "method": run.config.to_dict(),
        "calibration": calib.description,
        "engine": {"device": run.device, "forward_dtype": report.forward_dtype,
                   "threads": torch.get_num_threads()},
        "seed": run.calibration.seed,
        "versions": library_versions(),
        "sparsity": {"overall": report.overall_sparsity, "per_layer": report.layer_sparsity,
                     "block_targets": report.block_targets,
                     "outlier_ratios": report.outlier_ratios, "ignored": report.ignored},
        "timing_seconds": {"compress_total": compress_seconds, **report.seconds},
        "eval_protocol": run.protocol.to_dict(),
        "metrics": metrics,
    }


def _evaluate(loaded: LoadedModel, streams: TokenStreams, run: CompressionRun):
    return evaluate_perplexities(loaded.module, streams, run.protocol, device=run.device,
                                 progress=run.progress)


def save_lm_artifact(out: Path, loaded: LoadedModel, manifest: dict, *, overwrite: bool) -> Path:
    """Write a Hugging Face-compatible directory plus `toolkit.json`, atomically."""

    def write(staging: Path) -> None:
        loaded.module.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)

    return save_artifact(out, write, manifest, overwrite=overwrite)
