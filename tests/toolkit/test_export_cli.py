"""`toolkit export onnx` end to end on fake artifacts: the file is written only when it
verifies, the report says what was carried and what was dropped, bad input exits 2."""

from __future__ import annotations

import json
import sys

import pytest

from tests.toolkit.test_cli import SMALL

pytest.importorskip("onnxruntime")
EXPORT = ["--max-context", "48", "--new-tokens", "8", "--quiet"]


@pytest.fixture(scope="module")
def artifacts(toolkit_cli, fake_model_dir, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("export")
    made = {}
    for name, flags in {"gptq4": ["--method", "gptq", "--bits", "4", "--group-size", "32"],
                        "wanda": ["--method", "wanda", "--sparsity", "0.5"],
                        "palettize4": ["--method", "palettize", "--bits", "4",
                                       "--group-rows", "16"]}.items():
        result = toolkit_cli("compress", "--model", fake_model_dir, *flags, "--out",
                             tmp / name, *SMALL)
        assert result.code == 0, result.err
        made[name] = tmp / name
    return made


def test_quantized_artifact_exports_with_its_codes_and_verifies(toolkit_cli, artifacts,
                                                                tmp_path) -> None:
    out, report = tmp_path / "m.onnx", tmp_path / "m.json"
    result = toolkit_cli("export", "onnx", "--model", artifacts["gptq4"], "--out", out,
                         "--json", report, *EXPORT)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["carried"] == {"MatMulNBits 4-bit, block 32": 14} and data["dropped"] == []
    assert data["verdict"] == "passed" and data["lost"] == []
    check = data["verification"]
    assert check["passed"] and check["tokens_match"] and len(check["runtime_tokens"]) == 8
    assert data["file_bytes"] == out.stat().st_size < data["float32_bytes"]
    assert "greedy tokens      same (8 tokens)" in result.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]


def _export_tflite(toolkit_cli, artifact, tmp_path):
    pytest.importorskip("litert_torch")
    out, report = tmp_path / "m.tflite", tmp_path / "m.json"
    result = toolkit_cli("export", "tflite", "--model", artifact, "--out", out,
                         "--prefill-tokens", "4", "--json", report, *EXPORT)
    assert result.code == 0, result.err
    return result, json.loads(report.read_text())


def test_tflite_export_carries_integer_codes_as_weight_only(toolkit_cli, artifacts, tmp_path):
    result, data = _export_tflite(toolkit_cli, artifacts["gptq4"], tmp_path)
    assert data["carried"] == {"DEQUANTIZE int4 block 32": 14} and data["dropped"] == []
    assert data["verification"]["passed"] and data["verification"]["runtime"] == "ai-edge-litert"
    assert data["file_bytes"] < data["float32_bytes"]
    assert "Run Decompositions" not in result.out + result.err  # converter logs kept quiet


def test_tflite_export_maps_the_palettes_and_reports_the_loss(toolkit_cli, artifacts,
                                                               tmp_path):
    result, data = _export_tflite(toolkit_cli, artifacts["palettize4"], tmp_path)
    assert data["carried"] == {"DEQUANTIZE int4 block 32 (mapped from a 4-bit palette)": 14}
    assert data["dropped"] == [] and data["lost"] == [] and data["verdict"] == "passed"
    losses = data["mapped_palettes"]
    assert len(losses) == 14 and all(0 < loss < 0.2 for loss in losses.values())
    assert "14 palette layers, relative weight error mean" in result.out
    # Passing means the file computes what the mapped weights give; the comparison with
    # the artifact's palettes is reported beside it.
    check = data["verification"]
    assert check["passed"] and check["logits"]["relative_error"] < 1e-4
    assert check["vs_artifact"]["logits"]["max_abs_error"] > 0
    assert "logits vs artifact" in result.out


def test_tflite_palettes_map_to_int8_on_request(toolkit_cli, artifacts, tmp_path):
    pytest.importorskip("litert_torch")
    report = tmp_path / "m.json"
    result = toolkit_cli("export", "tflite", "--model", artifacts["palettize4"], "--out",
                         tmp_path / "m.tflite", "--palette-map-bits", "8", "--prefill-tokens",
                         "4", "--no-verify", "--json", report, *EXPORT)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["carried"] == {"DEQUANTIZE int8 block 32 (mapped from a 4-bit palette)": 14}
    assert max(data["mapped_palettes"].values()) < 0.02


def test_coreml_export_is_checked_without_running(toolkit_cli, artifacts, tmp_path):
    pytest.importorskip("coremltools")
    out, report = tmp_path / "m.mlpackage", tmp_path / "m.json"
    result = toolkit_cli("export", "coreml", "--model", artifacts["gptq4"], "--out", out,
                         "--json", report, *EXPORT)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["carried"] == {"constexpr_blockwise_shift_scale 4-bit, block 32": 14}
    checks = {item["check"]: item["passed"] for item in data["verification"]["checks"]}
    assert checks == {"inputs": True, "output": True, "states": True,
                      "constexpr_blockwise_shift_scale": True, "compressed weights": True}
    assert "numerics not checked: Core ML runs only on macOS" in result.out
    assert out.is_dir() and (out / "Manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.mlpackage"]


def test_pruned_artifact_reports_the_sparsity_onnx_drops(toolkit_cli, artifacts, tmp_path):
    out, report = tmp_path / "w.onnx", tmp_path / "w.json"
    result = toolkit_cli("export", "onnx", "--model", artifacts["wanda"], "--out", out,
                         "--json", report, *EXPORT)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    (dropped,) = data["dropped"]
    assert dropped["layer"] == "pruned linears"
    assert dropped["why"].startswith("50.0% zeros stored dense")
    assert data["verdict"] == ("passed, but carried none of: pruned zeros (50.0% of the "
                               "pruned layers' weights, stored dense)")


def test_failed_verification_writes_nothing_and_exits_2(toolkit_cli, artifacts, tmp_path):
    result = toolkit_cli("export", "onnx", "--model", artifacts["gptq4"], "--out",
                         tmp_path / "m.onnx", "--rtol", "1e-12", *EXPORT)
    assert result.code == 2
    assert "failed verification" in result.err and "nothing was written" in result.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "{tmp}/m.tflite"], "must end in .onnx for target onnx"),
    (["--out", "{tmp}/exists.onnx"], "pass --overwrite"),
    (["--out", "{tmp}/m.onnx", "--rtol", "2"], "--rtol 2.0 must lie in (0, 1)"),
])
def test_bad_output_arguments_exit_2_in_one_line(toolkit_cli, tmp_path, args, message):
    (tmp_path / "exists.onnx").write_bytes(b"x")
    argv = [a.format(tmp=tmp_path) for a in args]
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", *argv, *EXPORT)
    assert result.code == 2 and message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert (tmp_path / "exists.onnx").read_bytes() == b"x"


def test_unsupported_architecture_names_the_part(toolkit_cli, tmp_path) -> None:
    result = toolkit_cli("export", "onnx", "--model", "fake-gemma", "--out",
                         tmp_path / "g.onnx", *EXPORT)
    assert result.code == 2 and "(1 + w) RMSNorm" in result.err
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_package_names_the_extra(toolkit_cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import now raises ImportError
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--out",
                         tmp_path / "m.onnx", *EXPORT)
    assert result.code == 2
    assert "pip install 'edge-toolkit[onnx]'" in result.err and "'onnx'" in result.err


def test_embedding_bits_carry_the_table_and_head_quantized(toolkit_cli, artifacts, tmp_path):
    out, report = tmp_path / "m.onnx", tmp_path / "m.json"
    result = toolkit_cli("export", "onnx", "--model", artifacts["gptq4"], "--out", out,
                         "--embedding-bits", "4", "--embedding-group-size", "16",
                         "--json", report, *EXPORT)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["carried"] == {
        "MatMulNBits 4-bit, block 32": 14,
        "rows of the head's MatMulNBits 4-bit, block 16 (quantized at export)": 1,
        "MatMulNBits 4-bit, block 16 (quantized at export, shared with the table)": 1}
    assert data["verification"]["passed"] and data["verification"]["tokens_match"]


@pytest.mark.parametrize("flags, needle", [
    (["--embedding-group-size", "24", "--embedding-bits", "4"], "power of two >= 16"),
    (["--embedding-bits", "3"], "invalid choice"),
])
def test_bad_embedding_quantization_is_refused(toolkit_cli, tmp_path, flags, needle):
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--out",
                         tmp_path / "m.onnx", *flags, *EXPORT)
    assert result.code == 2 and needle in result.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model, flags, needle", [
    ("fake-llama", ["--onnx-attention", "standard", "--kv-cache", "float16"],
     "--kv-cache float16 needs the fused attention"),
    ("fake-moe-llm", ["--onnx-attention", "fused"],
     "mixture-of-experts models are exported with the standard attention"),
    ("fake-llama", ["--kv-cache", "int4"], "invalid choice"),
    ("fake-moe-llm", ["--kv-cache", "int8"],
     "mixture-of-experts models are exported with the standard attention and a float32 cache"),
])
def test_attention_and_cache_options_a_file_cannot_carry_are_refused(
        toolkit_cli, tmp_path, model, flags, needle):
    result = toolkit_cli("export", "onnx", "--model", model, "--out", tmp_path / "m.onnx",
                         *flags, *EXPORT)
    assert result.code == 2 and needle in result.err
    assert len(result.err.strip().splitlines()) <= 2  # argparse adds its usage line
    assert list(tmp_path.iterdir()) == []


def test_tflite_embedding_bits_carry_the_table_and_head(toolkit_cli, tmp_path):
    pytest.importorskip("litert_torch")
    out, report = tmp_path / "m.tflite", tmp_path / "m.json"
    result = toolkit_cli("export", "tflite", "--model", "fake-llama", "--out", out,
                         "--embedding-bits", "8", "--prefill-tokens", "4", "--json", report,
                         *EXPORT)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["carried"] == {"GATHER int8 rows, block 32 (quantized at export)": 1,
                               "DEQUANTIZE int8 block 32 (quantized at export)": 1}
    assert data["verification"]["passed"] and data["verification"]["tokens_match"]
