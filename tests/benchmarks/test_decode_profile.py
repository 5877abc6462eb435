"""benchmarks/decode_profile.py: the section's "% of bound" and read rates from hand-made
measurements, computed here independently; the profile child on a real (tiny) ONNX LLM
file leaves the prefill out and groups the MatMulNBits nodes by layer type."""

from __future__ import annotations

import pytest

from benchmarks import decode_profile

pytest.importorskip("onnxruntime")


def _data(probe: list[float], cold: list[float], warm: list[float]) -> dict:
    return {
        "environment": {"cpu": "test cpu", "cores": 2, "date": "2026-12-04"},
        "file": decode_profile.FILE_NAME, "rounds": len(cold),
        "bytes_per_token": {"total": 82_000_000, "accuracy_levels": [4]},
        "ratios": {"1|4 KiB (default)": {"probe_gb_per_s": probe, "cold_ms": cold,
                                         "warm_ms": warm, "anon_huge_kb": 2048}},
        "load_average_1min_end": 0.5,
        "profile": {"steps": 3, "op_us_per_step": {"MatMulNBits": 900.0, "Mul": 100.0},
                    "matmulnbits": {"lm_head.MatMulNBits": {"count": 1, "bytes": 2_000_000,
                                                            "us_per_step": 400.0}}},
    }


def test_percent_of_bound_is_bound_time_over_the_median_cold_step():
    # median probe 10 GB/s -> 82 MB take 8.2 ms; median cold step 10 ms -> 82%
    text = decode_profile.markdown(_data([9.0, 10.0, 12.0], [11.0, 10.0, 9.0], [5, 4, 6]))
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2].startswith("10.0 ")
    assert cells[3].startswith("10.00 ")
    assert cells[4] == "82%"
    assert cells[6] == f"{82.0 / 5:.1f}"  # MB per warm ms
    assert cells[7] == "2"  # huge MB
    assert "| MatMulNBits | 900 | 90.0% |" in text
    assert "| lm_head.MatMulNBits | 1 | 2.00 | 400 | 5.0 |" in text


def test_profile_child_leaves_the_prefill_out(tmp_path, exported_fake_llm_onnx):
    data = decode_profile.child_profile(exported_fake_llm_onnx, 1, 4, tmp_path)
    assert data["steps"] == 4
    groups = data["matmulnbits"]
    assert groups and all(".N." in name or "lm_head" in name for name in groups)
    assert all(entry["bytes"] > 0 and entry["us_per_step"] > 0 for entry in groups.values())
