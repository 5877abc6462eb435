"""`toolkit compress --method palettize --target-bits ... --sensitivity ...` on the fake
Llama: the summary and the report show the allocation per layer type, 3- and 6-bit tables
survive the artifact (checked on the loaded weights), and a bad sensitivity is one line."""

from __future__ import annotations

import json
from pathlib import Path

import models
from tests.toolkit.test_cli import block_linears

SMALL = ["--calib-samples", "4", "--seq-len", "32", "--eval-windows", "2",
         "--eval-seq-len", "64"]


def test_measured_mixed_2_3_4_6_summary_report_and_artifact(toolkit_cli, fake_model_dir,
                                                            tmp_path):
    out, report = tmp_path / "mixed", tmp_path / "mixed.json"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "palettize",
                         "--target-bits", "3.5", "--bits-choices", "2,3,4,6",
                         "--sensitivity", "measured", "--option", "iters=5",
                         "--out", out, "--json", report, *SMALL)
    assert result.code == 0, result.err
    allocation = json.loads(report.read_text(encoding="utf-8"))["quantization"]["allocation"]
    assert allocation["sensitivity_kind"] == "measured"
    assert 3.45 <= allocation["achieved_bits"] <= 3.5 + 1e-9
    line = next(x for x in result.out.splitlines() if x.startswith("mixed bits"))
    assert line.startswith(f"mixed bits (measured sensitivity): "
                           f"{allocation['achieved_bits']:.3f} bits per weight (target 3.5)")
    assert str(allocation["by_type"]) in line
    loaded = models.load_model(out)
    linears = block_linears(loaded.module)
    assert set(allocation["layer_bits"]) == set(linears)
    for name, bits in allocation["layer_bits"].items():
        weight = linears[name].weight.detach()
        for group in weight.split(16):  # 16 rows share one table of 2^bits values
            assert group.unique().numel() <= 1 << bits, (name, bits)
    counted: dict[str, dict[str, int]] = {}
    for name, bits in allocation["layer_bits"].items():
        kind = name.split(".", 3)[3]  # model.layers.I.<type>
        counted.setdefault(kind, {}).setdefault(str(bits), 0)
        counted[kind][str(bits)] += 1
    assert allocation["by_type"] == counted


def test_bad_sensitivity_is_one_line_and_exit_2(toolkit_cli, fake_model_dir, tmp_path):
    out = tmp_path / "out"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "palettize",
                         "--target-bits", "3", "--sensitivity", "kl", "--out", out, *SMALL)
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert "sensitivity 'kl' is unknown: use one of absolute, relative, measured" in result.err
    assert not out.exists() and [p.name for p in Path(tmp_path).iterdir()] == []
