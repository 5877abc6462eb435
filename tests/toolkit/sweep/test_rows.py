"""Rows read back from a point's files: LoRA adapters apart from the base bits, float
bits from the safetensors headers, a budget's closest point."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.qformat.lora import LORA_FILE
from toolkit.sweep.budget import best_within, closest, excess, parse_budget
from toolkit.sweep.points import ARTIFACT, COMPRESS, DONE, EVAL, Point
from toolkit.sweep.rows import point_row


def fake_point(tmp_path: Path, manifest: dict, tensors: dict[str, torch.Tensor]) -> Point:
    directory = tmp_path / "p"
    artifact = directory / ARTIFACT
    artifact.mkdir(parents=True)
    save_file(tensors, artifact / "model.safetensors")
    (artifact / "toolkit.json").write_text(json.dumps({"files": {
        "weights": ["model.safetensors"],
        "weights_bytes": (artifact / "model.safetensors").stat().st_size}}))
    (directory / COMPRESS).write_text(json.dumps({"manifest": manifest, "wall_seconds": 2.0,
                                                  "peak_rss_mb": 300.0}))
    score = {"value": 0.5, "low": 0.25, "high": 0.75, "n": 8, "kind": "accuracy"}
    (directory / EVAL).write_text(json.dumps({"scores": {
        "ppl_wikipedia": {"value": 20.0, "low": 19.0, "high": 21.0, "n": 2},
        "factoid_closed_book": score}}))
    (directory / DONE).write_text("{}")
    return Point("p", "k", {"stages": [{"method": "rtn"}]}, directory)


def test_lora_adapters_are_reported_apart(tmp_path):
    manifest = {"quantization": {"bits_per_weight": 2.5},
                "stages": [{"kind": "quantize", "report": {}},
                           {"kind": "lora", "report": {"adapter_bits_per_weight": 0.19,
                                                       "rank": 16}}],
                "timing_seconds": {"compress_total": 1.5}}
    point = fake_point(tmp_path, manifest, {"w": torch.zeros(4, 4)})
    save_file({"a": torch.zeros(100, dtype=torch.float16)},
              point.directory / ARTIFACT / LORA_FILE)
    row = point_row(point, None)
    assert row["bits_per_weight"] == 2.5
    assert row["adapter_bits_per_weight"] == 0.19 and row["adapter_rank"] == 16
    assert row["adapter_mb"] == (point.directory / ARTIFACT / LORA_FILE).stat().st_size / 1e6
    assert row["wiki_ppl"] == 20.0 and row["wiki_ppl_ci"] == [19.0, 21.0]
    assert row["closed_book_pct"] == 50.0 and row["closed_book_ci_pct"] == [25.0, 75.0]
    assert row["open_book_pct"] is None and row["latency_ms"] is None
    assert row["compress_seconds"] == 1.5 and row["peak_rss_mb"] == 300.0


def test_float_artifacts_report_their_stored_bits(tmp_path):
    point = fake_point(tmp_path, {}, {"a": torch.zeros(30, dtype=torch.float32),
                                      "b": torch.zeros(10, dtype=torch.bfloat16),
                                      "i": torch.zeros(50, dtype=torch.int8)})
    row = point_row(point, None)
    assert row["bits_per_weight"] == (30 * 32 + 10 * 16) / 40  # integer tensors are codes
    assert row["adapter_bits_per_weight"] is None


def test_a_float_base_with_adapters_reports_its_own_bits_and_the_adapters_apart(tmp_path):
    manifest = {"stages": [{"kind": "prune", "report": {}},
                           {"kind": "lora", "report": {"adapter_bits_per_weight": 0.74,
                                                       "rank": 16}}]}
    point = fake_point(tmp_path, manifest, {"w": torch.zeros(40, dtype=torch.float32)})
    save_file({"a": torch.zeros(100, dtype=torch.float16)},
              point.directory / ARTIFACT / LORA_FILE)
    toolkit_json = point.directory / ARTIFACT / "toolkit.json"
    files = json.loads(toolkit_json.read_text())
    files["files"]["weights"] = [LORA_FILE, "model.safetensors"]  # as the LLM writer lists
    toolkit_json.write_text(json.dumps(files))
    row = point_row(point, None)
    assert row["bits_per_weight"] == 32.0  # the fp16 adapters are not blended in
    assert row["adapter_bits_per_weight"] == 0.74 and row["adapter_rank"] == 16


def test_closest_is_the_smallest_worst_relative_excess():
    budget = parse_budget("size=100MB,latency=10ms")
    rows = [{"name": "big", "size_mb": 150.0, "latency_ms": 9.0, "wiki_ppl": 10.0},
            {"name": "slow", "size_mb": 90.0, "latency_ms": 12.0, "wiki_ppl": 12.0},
            {"name": "both", "size_mb": 110.0, "latency_ms": 11.0, "wiki_ppl": 11.0}]
    assert excess(rows[0], budget) == {"size": 50.0}
    # big: 1.5x over in size; slow: 1.2x in latency; both: 1.1x worst.
    assert closest(rows, budget)["name"] == "both"
    assert parse_budget("size=1.5GB,latency=0.04s").limits == {"size": 1500.0,
                                                               "latency": 40.0}


def test_a_size_budget_counts_the_exported_file_when_there_is_one():
    # A benched row ships its exported file (embeddings quantized or not); an unbenched
    # row only has its artifact on disk.
    budget = parse_budget("size=100MB")
    rows = [{"name": "artifact-only", "size_mb": 90.0, "file_mb": None, "wiki_ppl": 30.0},
            {"name": "big-artifact-small-file", "size_mb": 170.0, "file_mb": 80.0,
             "wiki_ppl": 25.0},
            {"name": "big-file", "size_mb": 95.0, "file_mb": 120.0, "wiki_ppl": 20.0}]
    assert best_within(rows, budget)["name"] == "big-artifact-small-file"
    assert excess(rows[2], budget) == {"size": 20.0}


def test_a_benched_row_carries_the_accuracy_level_its_export_chose(tmp_path):
    point = fake_point(tmp_path, {"quantization": {"bits_per_weight": 4.0}, "stages": []},
                       {"w": torch.zeros(4, 4)})
    bench = point.directory / "bench-onnx"
    bench.mkdir()
    (bench / "bench.json").write_text(json.dumps({"models": [{
        "runtime": "onnxruntime", "file_bytes": 2_000_000,
        "latency": {"p50_ms": 12.0, "p90_ms": 13.0}, "llm": {"decode_tokens_per_s": 80.0}}]}))
    (bench / "export.json").write_text(json.dumps({"verification": {
        "accuracy_level": {"4": 0, "8": 4}}}))
    row = point_row(point, "bench-onnx")
    assert row["latency_ms"] == 12.0 and row["file_mb"] == 2.0
    assert row["bench"]["accuracy_level"] == {"4": 0, "8": 4}
    (bench / "export.json").unlink()
    assert point_row(point, "bench-onnx")["bench"]["accuracy_level"] is None
