"""`toolkit export` on the registered vision fakes (fake-cnn, and fake-vmoe with its
per-image expert routing): normalisation folded in,
float files verified against PyTorch on one of the family's images, static int8 LiteRT
calibrated on the family's images, bad combinations refused in one line."""

from __future__ import annotations

import json

import pytest


def _export(toolkit_cli, tmp_path, target: str, suffix: str, *extra: str,
            model: str = "fake-cnn"):
    out, report = tmp_path / f"m{suffix}", tmp_path / "m.json"
    result = toolkit_cli("export", target, "--model", model, "--out", out, "--json",
                         report, "--quiet", *extra)
    return result, out, (json.loads(report.read_text()) if report.exists() else None)


@pytest.mark.parametrize("model", ["fake-cnn", "fake-vmoe"])
@pytest.mark.parametrize(("target", "suffix", "module", "layout"),
                         [("onnx", ".onnx", "onnxruntime", "NCHW"),
                          ("tflite", ".tflite", "ai_edge_litert", "NHWC")])
def test_float_export_matches_pytorch(toolkit_cli, tmp_path, target, suffix, module,
                                      layout, model) -> None:
    pytest.importorskip(module)
    result, out, data = _export(toolkit_cli, tmp_path, target, suffix, model=model)
    assert result.code == 0, result.err
    assert data["layout"] == layout and data["carried"] == {}
    (output,) = data["verification"]["outputs"]
    assert output["relative_error"] < 1e-4 and data["verification"]["rtol"] == 1e-3
    assert data["file_bytes"] == out.stat().st_size
    assert "output0 vs PyTorch" in result.out and "passed" in result.out


def test_int8_tflite_is_calibrated_smaller_and_verified(toolkit_cli, tmp_path) -> None:
    pytest.importorskip("ai_edge_quantizer")
    result, out, data = _export(toolkit_cli, tmp_path, "tflite", ".tflite", "--int8",
                                "--calibration-images", "16")
    assert result.code == 0, result.err
    assert list(data["carried"]) == ["static int8: weights per channel, activations per "
                                     "tensor, int8 input and output"]
    assert data["file_bytes"] == out.stat().st_size < data["float_file_bytes"] / 2.5
    check = data["verification"]
    assert check["rtol"] == 0.05 and check["passed"]
    assert 1e-4 < check["outputs"][0]["relative_error"] < 0.05  # int8 is not float
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.tflite"]


@pytest.mark.parametrize("model", ["fake-cnn", "fake-vmoe"])
def test_coreml_vision_package_is_checked_without_running(toolkit_cli, tmp_path,
                                                          model) -> None:
    pytest.importorskip("coremltools")
    result, _, data = _export(toolkit_cli, tmp_path, "coreml", ".mlpackage", model=model)
    assert result.code == 0, result.err
    check = data["verification"]
    assert check["passed"] and check["numerics"].startswith("numerics not checked")
    assert [c["check"] for c in check["checks"]] == ["inputs", "outputs"]


@pytest.mark.parametrize(("model", "target", "message"), [
    ("fake-cnn", "coreml", "--int8 (static int8) is offered for onnx and tflite, not coreml"),
    ("fake-llama", "tflite", "--int8 is static int8 for vision models"),
])
def test_int8_where_it_does_not_apply_exits_2(toolkit_cli, tmp_path, model, target,
                                              message) -> None:
    suffix = {"coreml": ".mlpackage", "tflite": ".tflite"}[target]
    out = tmp_path / f"m{suffix}"
    result = toolkit_cli("export", target, "--model", model, "--out", out, "--int8")
    assert result.code == 2
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
