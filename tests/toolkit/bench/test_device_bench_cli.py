"""`toolkit bench --device browser|phone` end to end: the web app's bench page in the
system's headless Chromium (Playwright) runs an LLM bundle and vision files with
onnxruntime-web and LiteRT.js, posts its samples back, and the report's statistics
and accuracy (against the same files in Python's runtimes) come out as for host runs.
A corrupt model is named by its sha256; bad options are refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.toolkit.bench.browser_skip import skip_without_browser

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--prompt-tokens", "16"]


@pytest.fixture(scope="module")
def exported(toolkit_cli, tmp_path_factory):
    """A fake-llama ONNX bundle (context 48) and fake-cnn as .onnx and .tflite, in a
    folder whose name has a space and a non-ASCII letter."""
    folder = tmp_path_factory.mktemp("device bench") / "models é"
    folder.mkdir()
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--bundle",
                         folder / "llm bundle", "--max-context", "48", "--quiet")
    assert result.code == 0, result.err
    for target, suffix in (("onnx", ".onnx"), ("tflite", ".tflite")):
        result = toolkit_cli("export", target, "--model", "fake-cnn", "--out",
                             folder / f"cnn{suffix}", "--quiet")
        assert result.code == 0, result.err
    return folder


def test_browser_bench_runs_bundles_and_files_and_matches_python(toolkit_cli, exported,
                                                                  tmp_path):
    skip_without_browser()
    report_path = tmp_path / "report.json"
    result = toolkit_cli("bench", "--device", "browser", "--backend", "wasm",
                         exported / "llm bundle", exported / "cnn.onnx",
                         exported / "cnn.tflite", *FAST, "--json", report_path,
                         "--html", tmp_path / "report.html")
    assert result.code == 0, result.err
    report = json.loads(report_path.read_text(encoding="utf-8"))
    llm, cnn_onnx, cnn_tflite = report["models"]
    assert [m["runtime"] for m in report["models"]] == [
        "browser (wasm)", "browser (wasm)", "browser (litert-js)"]
    assert "HeadlessChrome" in report["environment"]["user agent"]
    for model in report["models"]:
        samples = model["samples_ms"]
        assert len(samples) >= 3
        # the statistics are the host's, from the page's raw samples
        assert model["latency"]["p50_ms"] == pytest.approx(np.percentile(samples, 50))
        assert model["latency"]["p90_ms"] == pytest.approx(np.percentile(samples, 90))
        assert model["load_seconds"] > 0 and model["first_inference_ms"] > 0
    assert llm["llm"]["prompt_tokens"] == 16 and llm["llm"]["max_context"] == 48
    assert llm["llm"]["decode_tokens_per_s"] == pytest.approx(1000 / llm["latency"]["p50_ms"])
    assert cnn_onnx["llm"] is None
    # the browser's outputs against onnxruntime / LiteRT in Python on the same inputs
    assert llm["accuracy"]["max_abs_error"] < 1e-4 and llm["accuracy"]["cosine"] > 0.99999
    assert cnn_onnx["accuracy"]["relative_error"] < 1e-5
    assert cnn_tflite["accuracy"]["relative_error"] < 1e-4
    assert "browser (wasm)" in result.out and (tmp_path / "report.html").is_file()
    # page weight: each model file downloaded once (the bench needs no tokenizer), and
    # the wasm runtimes
    served = report["served_bytes"]
    assert served["models"] == sum(m["file_bytes"] for m in report["models"])
    assert served["runtime"] > 5e6 and served["app"] > 0


def test_phone_emulation_reports_the_phone_browser(toolkit_cli, exported, tmp_path):
    skip_without_browser()
    report_path = tmp_path / "r.json"
    result = toolkit_cli("bench", "--device", "browser", "--emulate", "Pixel 7",
                         exported / "cnn.onnx", *FAST, "--json", report_path)
    assert result.code == 0, result.err
    environment = json.loads(report_path.read_text(encoding="utf-8"))["environment"]
    assert "Android" in environment["user agent"] and environment["emulated device"] == "Pixel 7"


def test_a_corrupt_model_file_is_named_by_its_sha256(toolkit_cli, exported, tmp_path):
    skip_without_browser()
    bundle = tmp_path / "bundle"
    shutil.copytree(exported / "llm bundle", bundle)
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    result = toolkit_cli("bench", "--device", "browser", bundle, *FAST)
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert "model.onnx does not match its sha256 in bundle.json" in result.err
    assert "export the bundle again" in result.err


def test_phone_prints_the_url_and_qr_and_times_out_in_one_line(toolkit_cli, exported):
    result = toolkit_cli("bench", "--device", "phone", "--no-tls", "--timeout", "0.5",
                         exported / "cnn.onnx", *FAST)
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert "no results from a phone" in result.err and "--timeout" in result.err
    assert "/bench.html" in result.out and "▄" in result.out  # the URL and its QR code
    assert "loopback only" in result.out  # a phone cannot reach 127.0.0.1: said so


@pytest.mark.parametrize(("extra", "message"), [
    (["--emulate", "Pixel 7", "--device", "phone"], "--emulate is for --device browser"),
    (["--device", "browser", "--runtime", "torch"], "drop --runtime and --reference"),
    (["--device", "browser", "--timeout", "0"], "--timeout 0.0 must be > 0"),
    (["--device", "browser", "--prompt-tokens", "48"], "does not fit its exported context"),
    (["--tls"], "--tls is for --device browser|phone"),
])
def test_bad_options_are_refused_in_one_line(toolkit_cli, exported, extra, message):
    result = toolkit_cli("bench", exported / "llm bundle", *extra)
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert message in result.err


def test_a_folder_that_is_not_a_bundle_is_refused(toolkit_cli, tmp_path):
    result = toolkit_cli("bench", "--device", "browser", tmp_path)
    assert result.code == 2 and "a folder without bundle.json" in result.err


def test_a_core_ml_bundle_is_refused_for_the_browser(toolkit_cli, tmp_path):
    pytest.importorskip("coremltools")
    bundle = tmp_path / "cnn coreml"
    result = toolkit_cli("export", "coreml", "--model", "fake-cnn", "--bundle", bundle,
                         "--quiet")
    assert result.code == 0, result.err
    for argv in (("bench", "--device", "browser", bundle), ("serve", bundle, "--duration", "1")):
        result = toolkit_cli(*argv)
        assert result.code == 2 and len(result.err_lines) == 1, result.err
        assert "bundle, which a browser cannot run" in result.err


def test_phone_mode_over_https_with_an_emulated_iphone(exported, tmp_path):
    """The whole phone flow: `--device phone --tls` serves https with its self-signed
    certificate and waits; an iPhone-emulated Chromium opens the printed URL (accepting the
    certificate, as a user does once) and its results end the command."""
    import os
    import re
    import subprocess
    import sys

    from toolkit.bench.device.browser import headless_page

    skip_without_browser()
    report = tmp_path / "phone.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    child = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "bench", "--device", "phone", "--tls", "--port", "0",
         "--timeout", "120", exported / "cnn.onnx", *FAST, "--json", report],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        for line in child.stdout:
            match = re.search(r"open (https://\S+) on the phone", line)
            if match:
                url = match.group(1)
                break
        assert url and url.startswith("https://127.0.0.1:"), url
        with headless_page(url, device="iPhone 15", ignore_https_errors=True) as (page, _):
            out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    data = json.loads(report.read_text(encoding="utf-8"))
    assert "iPhone" in data["environment"]["user agent"]
    assert data["models"][0]["accuracy"]["relative_error"] < 1e-5
    assert (tmp_path / "cache" / "edge-toolkit" / "bench-tls" / "cert.pem").is_file()
