"""One results row per point, read back from the files its worker wrote.

Sizes are decimal megabytes (1e6 bytes, as `toolkit bench` reports them) of every file of
the artifact on disk. Bits per weight are the manifest's (decoder-block linears, scales,
zero points and tables included); an artifact without quantization stores float weights,
whose bits are read from its safetensors headers (32 for the in-memory engine's fp32).
Low-rank adapters (a `lora` stage) are reported apart: their bits per base weight and
rank from the stage's report, and the bytes of their file; the base bits exclude them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from models.qformat.lora import LORA_FILE
from toolkit.sweep.points import ARTIFACT, COMPRESS, EVAL, Point

DTYPE_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8}
SCORES = {"ppl_wikipedia": "wiki_ppl", "ppl_news": "news_ppl"}
ACCURACIES = {"factoid_closed_book": "closed_book", "factoid_open_book": "open_book",
              "mmlu": "mmlu"}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def float_bits(artifact: Path, weight_files: list[str]) -> float | None:
    """Element-weighted bits of the floating-point tensors in the weight files."""
    bits = elements = 0
    for name in weight_files:
        try:
            with open(artifact / name, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error):
            return None
        for tensor, info in header.items():
            if tensor == "__metadata__" or info.get("dtype") not in DTYPE_BITS:
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            bits += DTYPE_BITS[info["dtype"]] * count
            elements += count
    return bits / elements if elements else None


def _adapters(manifest: dict[str, Any], artifact: Path) -> dict[str, Any]:
    """Low-rank adapters (a `lora` stage) apart from the base weights: the stage report's
    bits per base weight and rank, and the adapter file's bytes."""
    reports = [stage.get("report") or {} for stage in manifest.get("stages", [])
               if stage.get("kind") == "lora"]
    if not reports:
        return {"adapter_bits_per_weight": None, "adapter_mb": None, "adapter_rank": None}
    adapter_file = artifact / LORA_FILE
    return {"adapter_bits_per_weight": reports[-1].get("adapter_bits_per_weight"),
            "adapter_mb": adapter_file.stat().st_size / 1e6 if adapter_file.is_file() else None,
            "adapter_rank": reports[-1].get("rank")}


def point_row(point: Point, bench_dir: str | None) -> dict[str, Any]:
    """The row of a finished point (see results.json in toolkit/sweep/report.py)."""
    compress = _read_json(point.directory / COMPRESS) or {}
    manifest = compress.get("manifest") or {}
    artifact = point.directory / ARTIFACT
    quant = manifest.get("quantization") or {}
    files = (json.loads((artifact / "toolkit.json").read_text(encoding="utf-8"))
             .get("files", {}))
    bits = quant.get("bits_per_weight")
    row: dict[str, Any] = {
        "name": point.name, "key": point.key, "recipe": point.recipe,
        "size_mb": disk_bytes(artifact) / 1e6,
        "weights_mb": files.get("weights_bytes", 0) / 1e6,
        # Adapters are counted apart (below), so a float base's bits exclude their file.
        "bits_per_weight": bits if bits is not None
        else float_bits(artifact, [w for w in files.get("weights", []) if w != LORA_FILE]),
        **_adapters(manifest, artifact),
        "sparsity": (manifest.get("sparsity") or {}).get("overall"),
    }
    scores = (_read_json(point.directory / EVAL) or {}).get("scores", {})
    for score, column in SCORES.items():
        found = scores.get(score) or {}
        row[column] = found.get("value")
        row[f"{column}_ci"] = [found.get("low"), found.get("high")] if found else None
    for score, column in ACCURACIES.items():
        found = scores.get(score) or {}
        row[f"{column}_pct"] = 100 * found["value"] if found else None
        row[f"{column}_ci_pct"] = [100 * found["low"], 100 * found["high"]] if found else None
        row[f"{column}_n"] = found.get("n")
    timing = manifest.get("timing_seconds") or {}
    row.update({
        "compress_seconds": None if compress.get("dense") else timing.get("compress_total"),
        "compress_wall_seconds": None if compress.get("dense") else compress.get("wall_seconds"),
        "peak_rss_mb": None if compress.get("dense") else compress.get("peak_rss_mb"),
        **_bench(point.directory / bench_dir if bench_dir else None)})
    return row


def _bench(directory: Path | None) -> dict[str, Any]:
    report = _read_json(directory / "bench.json") if directory else None
    if not report:
        return {"latency_ms": None, "file_mb": None, "bench": None}
    model = report["models"][0]
    llm = model.get("llm") or {}
    return {"latency_ms": model["latency"]["p50_ms"],
            "file_mb": (model.get("file_bytes") or 0) / 1e6 or None,
            "bench": {"format": directory.name.split("-")[1], "runtime": model["runtime"],
                      "file_mb": (model.get("file_bytes") or 0) / 1e6,
                      "p90_ms": model["latency"]["p90_ms"],
                      "decode_tokens_per_s": llm.get("decode_tokens_per_s"),
                      "prefill_tokens_per_s": llm.get("prefill_tokens_per_s"),
                      "accuracy_level": _accuracy_level(directory)}}


def _accuracy_level(directory: Path):
    """The MatMulNBits accuracy level the export chose (export.onnx.accuracy_choice: an
    int, or one per weight width), which the latency depends on; None when not recorded."""
    export = _read_json(directory / "export.json") or {}
    return (export.get("verification") or {}).get("accuracy_level")


def failed_row(point: Point, error: str) -> dict[str, Any]:
    return {"name": point.name, "key": point.key, "recipe": point.recipe, "error": error}
