"""`--recover kd` after pruning: a distillation stage from the model before pruning, which
keeps the pruned weights at zero and lowers the KL to the teacher on its training rows."""

from __future__ import annotations

import json

import models
from tests.toolkit.test_cli import SMALL, block_linears


def test_wanda_then_kd_keeps_sparsity_and_moves_towards_the_teacher(toolkit_cli, fake_model_dir,
                                                                    tmp_path):
    out, report = tmp_path / "wanda-kd", tmp_path / "wanda-kd.json"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "wanda",
                         "--recover", "kd", "--recover-steps", "12", "--out", out,
                         "--json", report, *SMALL)
    assert result.code == 0, result.err
    manifest = json.loads(report.read_text(encoding="utf-8"))
    assert [s["method"] for s in manifest["recipe"]["stages"]] == ["wanda", "distill"]
    distilled = manifest["stages"][1]["report"]
    assert distilled["kind"] == "distill" and distilled["steps"] == 12
    assert distilled["final_kl"] < distilled["initial_kl"]
    # Zeros counted in the saved weights, independently of the toolkit's own count.
    saved = models.load_model(str(out)).module
    for name, linear in block_linears(saved).items():
        zeros = float((linear.weight == 0).float().mean())
        assert abs(zeros - 0.5) < 0.01, name
    assert abs(manifest["sparsity"]["overall"] - 0.5) < 0.01


def test_recover_steps_without_recover_and_distill_alone_are_refused(toolkit_cli,
                                                                    fake_model_dir, tmp_path):
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "wanda",
                         "--recover-steps", "5", "--out", tmp_path / "x", *SMALL)
    assert result.code == 2 and "--recover-steps needs --recover kd" in result.err
    assert not (tmp_path / "x").exists()
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "distill",
                         "--out", tmp_path / "y", *SMALL)
    assert result.code == 2 and "invalid choice: 'distill'" in result.err
