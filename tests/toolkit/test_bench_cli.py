"""`toolkit bench` on a fake exported LLM and its PyTorch artifact: every report field is
present and consistent, accuracy is measured against the PyTorch model, and bad input
exits 2 with one line that names the file."""

from __future__ import annotations

import json

import pytest

from tests.toolkit.test_cli import SMALL

pytest.importorskip("onnxruntime")
FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--prompt-tokens", "8",
        "--max-context", "32"]
MODEL_FIELDS = {"name", "path", "runtime", "file_bytes", "sha256", "load_seconds",
                "first_inference_ms", "latency", "samples_ms", "llm", "peak_rss_mb",
                "accuracy"}
LATENCY_FIELDS = {"count", "mean_ms", "std_ms", "min_ms", "max_ms", "p50_ms", "p90_ms",
                  "p99_ms", "total_seconds"}


@pytest.fixture(scope="module")
def exported(toolkit_cli, fake_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    artifact, onnx_file = tmp / "rtn4", tmp / "rtn4.onnx"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "rtn", "--bits",
                         "4", "--group-size", "32", "--out", artifact, *SMALL)
    assert result.code == 0, result.err
    # Float compute (not the default int8 activations): the accuracy check below then
    # holds the file to 1e-4 of PyTorch.
    result = toolkit_cli("export", "onnx", "--model", artifact, "--out", onnx_file,
                         "--max-context", "32", "--new-tokens", "4", "--accuracy-level", "0",
                         "--quiet")
    assert result.code == 0, result.err
    tflite_file = tmp / "rtn4.tflite"
    result = toolkit_cli("export", "tflite", "--model", artifact, "--out", tflite_file,
                         "--max-context", "32", "--prefill-tokens", "4", "--new-tokens", "4",
                         "--quiet")
    assert result.code == 0, result.err
    return artifact, onnx_file, tflite_file


def test_bench_reports_every_field_for_file_and_pytorch_model(toolkit_cli, exported,
                                                              tmp_path) -> None:
    artifact, onnx_file, tflite_file = exported
    report_path, html = tmp_path / "bench.json", tmp_path / "bench.html"
    result = toolkit_cli("bench", onnx_file, artifact, tflite_file, *FAST, "--json",
                         report_path, "--html", html)
    assert result.code == 0, result.err
    report = json.loads(report_path.read_text())
    assert {"cpu", "threads per model", "onnxruntime", "ai-edge-litert",
            "torch"} <= set(report["environment"])
    onnx_model, torch_model, tflite_model = report["models"]
    for model in report["models"]:
        assert set(model) == MODEL_FIELDS
        assert set(model["latency"]) == LATENCY_FIELDS and model["latency"]["count"] >= 3
        assert len(model["samples_ms"]) == model["latency"]["count"]
        assert model["llm"]["prompt_tokens"] == 8 and model["llm"]["decode_tokens_per_s"] > 0
        assert model["peak_rss_mb"] > 50 and model["load_seconds"] > 0
    assert onnx_model["runtime"] == "onnxruntime" and torch_model["runtime"] == "torch"
    assert onnx_model["file_bytes"] == onnx_file.stat().st_size
    assert len(onnx_model["sha256"]) == 64 and torch_model["sha256"] is None
    # Accuracy against the PyTorch model in the run: itself exactly, the file closely.
    assert torch_model["accuracy"]["max_abs_error"] == 0.0
    assert onnx_model["accuracy"]["relative_error"] < 1e-4
    assert tflite_model["runtime"] == "litert"
    assert tflite_model["accuracy"]["relative_error"] < 1e-4  # 8 tokens in two chunks of 4
    assert onnx_model["accuracy"]["reference"] == str(artifact)
    page = html.read_text()
    assert page.count('class="model-row"') == 3 and "<svg" in page


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing.onnx", "missing.onnx does not exist"),
    (lambda tmp: tmp / "nothing-here", "is neither an .onnx file"),
    (lambda tmp: tmp / "m.mlpackage", "Core ML files run only on Apple devices"),
])
def test_bad_paths_exit_2_in_one_line(toolkit_cli, tmp_path, make, message) -> None:
    result = toolkit_cli("bench", make(tmp_path), *FAST)
    assert result.code == 2 and message in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_coreml_runtime_is_refused_off_apple_devices(toolkit_cli) -> None:
    result = toolkit_cli("bench", "fake-llama", "--runtime", "coreml", *FAST)
    assert result.code == 2 and "Core ML runs only on Apple devices" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_corrupt_onnx_file_names_the_file(toolkit_cli, tmp_path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    result = toolkit_cli("bench", corrupt, *FAST)
    assert result.code == 2 and str(corrupt) in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_vision_files_run_on_one_image_and_are_compared_with_pytorch(toolkit_cli,
                                                                     tmp_path) -> None:
    """fake-cnn in PyTorch, as float ONNX (NCHW), float LiteRT (NHWC) and static int8
    LiteRT (int8 input): one pixel image for all, so the errors are the formats' own."""
    pytest.importorskip("ai_edge_quantizer")
    files = {"m.onnx": [], "m.tflite": [], "q.tflite": ["--int8"]}
    for name, extra in files.items():
        target = "onnx" if name.endswith(".onnx") else "tflite"
        result = toolkit_cli("export", target, "--model", "fake-cnn", "--out",
                             tmp_path / name, "--quiet", *extra)
        assert result.code == 0, result.err
    report_path = tmp_path / "bench.json"
    result = toolkit_cli("bench", "fake-cnn", *(tmp_path / n for n in files), "--runs", "3",
                         "--warmup", "1", "--min-seconds", "0", "--json", report_path)
    assert result.code == 0, result.err
    models = {m["name"].rsplit("/", 1)[-1]: m for m in
              json.loads(report_path.read_text())["models"]}
    assert models["fake-cnn"]["accuracy"]["reference"] == "fake-cnn"
    assert models["fake-cnn"]["accuracy"]["max_abs_error"] == 0
    assert models["m.onnx"]["accuracy"]["max_abs_error"] < 1e-4
    assert models["m.tflite"]["accuracy"]["max_abs_error"] < 1e-4
    int8 = models["q.tflite"]["accuracy"]
    assert 1e-4 < int8["relative_error"] < 0.05 and int8["cosine"] > 0.999
    assert all(m["llm"] is None and m["latency"]["count"] >= 3 for m in models.values())
