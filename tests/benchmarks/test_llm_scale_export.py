"""The large-artifact export table: ONNX rows, a chunked Core ML row with its chunk sizes,
and a refused target, from result rows as export_rows writes them."""

from __future__ import annotations

from benchmarks.llm_scale_export import export_lines

BASE = {"shape": "afm-3b", "params": 3e9, "recipe": "rtn 4-bit g64", "artifact_bytes": 2e9,
        "compress_peak_rss": 1e9, "compress_wall": 1.0, "max_context": 512}


def test_rows_for_each_target_and_a_refusal() -> None:
    rows = [
        {**BASE, "verify": True, "file_bytes": 1.9e9, "peak_rss": 3.8e9, "wall": 100.0,
         "carried": {"MatMulNBits 4-bit, block 64": 182}, "verdict": "passed",
         "tokens_match": True, "logit_rel_error": 2e-6},  # an older row: no "target"
        {**BASE, "target": "coreml", "verify": True, "file_bytes": 2.1e9, "peak_rss": 7.9e9,
         "wall": 690.0, "carried": {"constexpr_blockwise_shift_scale": 182},
         "verdict": "passed", "tokens_match": None, "logit_rel_error": None,
         "chunks": [{"file": "m_chunk1.mlpackage", "bytes": 4.2e8, "layers": [0, 1]},
                    {"file": "m_chunk2.mlpackage", "bytes": 2.3e8, "layers": [2, 5]}]},
        {**BASE, "target": "tflite", "verify": True,
         "refused": "toolkit export: error: the tflite exporter converts the whole model"},
    ]
    lines = export_lines({"export": rows})
    table = [line for line in lines if line.startswith("| afm-3b")]
    assert len(table) == 3
    assert "| onnx (standard-ops graph, earlier run) |" in table[0]
    assert "tokens same, logits rel. error 2.0e-06" in table[0]
    assert "| coreml |" in table[1] and "chunks GB: 0.42, 0.23" in table[1]
    assert "passed (structural)" in table[1] and "**7.90**" in table[1]
    assert "| tflite | - | - | refused |" in table[2] and "converts the whole" in table[2]
    assert all(line.count("|") == lines[-4].count("|") for line in table)


def test_a_failed_verification_row_says_how_far_the_tokens_went() -> None:
    row = {**BASE, "target": "tflite", "verify": True, "file_bytes": 3.0e9, "peak_rss": 7.7e9,
           "wall": 1400.0, "carried": {"FULLY_CONNECTED int4 blockwise 32": 182},
           "verdict": "failed", "tokens_match": False, "logit_rel_error": 0.11,
           "tokens_same": "5 of 8",
           "vs_artifact": {"tokens_match": False, "logit_rel_error": 0.111},
           "chunks": [{"file": "m_chunk1.tflite", "bytes": 7.4e8, "layers": [0, 1]}]}
    line = next(x for x in export_lines({"export": [row]}) if x.startswith("| afm-3b"))
    assert "failed: tokens differ (5 of 8), logits rel. error 1.1e-01" in line
    assert "vs the artifact: tokens differ, logits 1.1e-01" in line
    assert "chunks GB: 0.74" in line and "**7.70**" in line
