"""The export benchmark's table: one row per variant and runtime, the ratio to the
variant's own PyTorch run, Core ML op counts and what was dropped."""

from benchmarks.export_bench import render


def _model(name: str, p50: float, size: int | None, error: float) -> dict:
    return {"name": name, "file_bytes": size, "load_seconds": 0.1,
            "latency": {"p50_ms": p50, "p90_ms": p50 * 1.2},
            "samples_ms": [p50 * 0.9, p50, p50 * 1.2],
            "llm": {"prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 1000 / p50},
            "accuracy": {"max_abs_error": error}}


def test_rows_ratios_and_coreml_columns() -> None:
    made = {"dense": {"pytorch": "m", "exports": {
        "onnx": {"path": "d.onnx"}, "tflite": {"path": "d.tflite"},
        "coreml": {"file_bytes": 2_000_000, "dropped": [{"why": "float: AWQ"}],
                   "verification": {"ops": {"constexpr_lut_to_dense": 7, "linear": 9}}}}}}
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
    assert "| dense | 2.0 | constexpr_lut_to_dense x7 | float: AWQ |" in table
