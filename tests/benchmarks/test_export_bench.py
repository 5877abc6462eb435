"""The export benchmark's tables: one row per variant and runtime with the ratio to the
variant's own PyTorch run; one row per file with what it carries, drops and how it was
verified."""

from benchmarks.export_bench import render


def _model(name: str, p50: float, size: int | None, error: float) -> dict:
    return {"name": name, "file_bytes": size, "load_seconds": 0.1,
            "latency": {"p50_ms": p50, "p90_ms": p50 * 1.2},
            "samples_ms": [p50 * 0.9, p50, p50 * 1.2],
            "llm": {"prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 1000 / p50},
            "accuracy": {"max_abs_error": error}}


def test_rows_ratios_and_what_each_file_carries() -> None:
    tokens = {"tokens_match": True, "logits": {"relative_error": 3e-6}}
    made = {"dense": {"pytorch": "m", "exports": {
        "onnx": {"path": "d.onnx", "file_bytes": 3_000_000, "carried": {}, "dropped": [],
                 "verification": tokens},
        "tflite": {"path": "d.tflite", "file_bytes": 4_000_000,
                   "carried": {"DEQUANTIZE int8 per channel": 210},
                   "dropped": [{"why": "zeros stored dense"}, {"why": "zeros stored dense"}],
                   "verification": tokens},
        "coreml": {"file_bytes": 2_000_000, "carried": {"constexpr_lut_to_dense 4-bit": 7},
                   "dropped": [], "verification": {"checks": [1, 2, 3], "passed": True}}}}}
    timing = {"dense": {
        "models": [_model("m", 4.0, None, 0.0), _model("d.onnx", 2.0, 3_000_000, 1e-6),
                   _model("d.tflite", 1.0, 4_000_000, 2e-6)],
        "environment": {"cpu": "cpu", "logical cpus": "2", "threads per model": "1",
                        "torch": "2"},
        "options": {"prompt_tokens": 64, "max_context": 256}}}
    table = render(made, timing)
    assert "| dense | ONNX | 3.0 | 100 | 1000 | 500.0 | 2.00 [1.80-2.40] | 2.00 | 1.00e-06 |" \
        in table
    assert "| dense | LiteRT | 4.0 |" in table and "| 4.00 | 2.00e-06 |" in table
    assert "| dense | PyTorch eager | - |" in table
    assert "| dense | onnx | 3.0 | - | - | tokens match, logit rel. err 3.0e-06 |" in table
    assert ("| dense | tflite | 4.0 | DEQUANTIZE int8 per channel (210) | zeros stored dense "
            "| tokens match" in table)
    assert ("| dense | coreml | 2.0 | constexpr_lut_to_dense 4-bit (7) | - | 3 structural "
            "checks passed (not run: Linux) |" in table)
