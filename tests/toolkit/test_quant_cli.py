"""Quantized artifacts end to end through the CLI on the fake Llama: what the file holds
is checked independently (raw safetensors, a hand-written 4-bit unpacker), and loading it
back reproduces the weights and the reported perplexity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import models
from tests.toolkit.test_cli import SMALL, block_linears

LINEAR = "model.layers.1.mlp.down_proj"


def unpack_nibbles(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Independent 4-bit unpacker: low nibble first."""
    pairs = torch.stack([packed & 0xF, packed >> 4], dim=1).reshape(-1)
    return pairs[:count].long()


@pytest.fixture(scope="module")
def rtn_artifact(toolkit_cli, fake_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rtn")
    out, report = tmp / "rtn4", tmp / "rtn4.json"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "rtn", "--bits", "4",
                         "--group-size", "32", "--out", out, "--json", report, *SMALL)
    assert result.code == 0, result.err
    return out, json.loads(report.read_text(encoding="utf-8"))


def test_file_holds_packed_codes_not_float_weights(rtn_artifact):
    """The file is a compressed-tensors checkpoint (int32 words of 4-bit codes, fp32 copies
    of the fp16 scales, zero points packed along the output dimension)."""
    out, report = rtn_artifact
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        layout = json.loads(handle.metadata()["edge_toolkit.quantization"])
        qweight = handle.get_tensor(f"{LINEAR}.weight_packed")
        scales = handle.get_tensor(f"{LINEAR}.weight_scale")
        zeros = handle.get_tensor(f"{LINEAR}.weight_zero_point")
    meta = layout["layers"][LINEAR]
    out_f, in_f = meta["shape"]
    assert f"{LINEAR}.weight" not in keys and qweight.dtype == torch.int32
    assert qweight.numel() == out_f * in_f // 8 and scales.dtype == torch.float32
    assert torch.equal(scales.half().float(), scales)
    recorded = report["quantization"]["layers"][LINEAR]
    assert {k: recorded[k] for k in meta} == meta and meta["bits"] == 4
    # Independent dequantization from the raw tensors (little-endian words: low nibble first).
    codes = unpack_nibbles(qweight.view(torch.uint8).reshape(-1), out_f * in_f).view(out_f, in_f)
    zero = unpack_nibbles(zeros.T.contiguous().view(torch.uint8).reshape(-1), scales.numel())
    zero = zero.view(scales.shape[1], out_f).T
    expected = scales.repeat_interleave(32, 1) * (codes - zero.repeat_interleave(32, 1))
    loaded = models.load_model(str(out))
    weight = dict(loaded.module.named_modules())[LINEAR].weight.detach()
    assert torch.equal(weight, expected)
    assert loaded.quantized and set(loaded.quantized) == set(layout["layers"])


def test_reported_bits_and_bytes_are_the_files(rtn_artifact):
    """Reported bits count codes, fp16 scales and zero points at their bit widths; the file
    holds the same codes and zero points, and each scale widened to fp32."""
    out, report = rtn_artifact
    quant = report["quantization"]
    packed = 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            tensor, kind = handle.get_tensor(key), key.rsplit(".", 1)[-1]
            if kind in ("weight_packed", "weight_zero_point"):
                packed += tensor.numel() * tensor.element_size()
            elif kind == "weight_scale":
                packed += tensor.numel() * 2
    assert quant["bytes"] == packed
    assert quant["bits_per_weight"] == pytest.approx(8 * packed / quant["weights"])
    assert quant["bits_per_weight"] == pytest.approx(4 + (16 + 4) / 32)
    assert report["files"]["weights_bytes"] == (out / "model.safetensors").stat().st_size
    assert (out / "recipe.yaml").is_file()
    assert report["recipe"]["stages"][0] == {"method": "rtn", "ignore": [], "bits": 4,
                                             "group_size": 32, "symmetric": False,
                                             "backend": "toolkit", "target_bits": None,
                                             "bits_choices": [3, 4, 6],
                                             "sensitivity": "measured",
                                             "sensitivity_windows": 4,
                                             "sensitivity_tokens": 256, "table_bits": None}


def test_eval_of_the_artifact_reproduces_the_reported_perplexity(toolkit_cli, rtn_artifact,
                                                                 tmp_path):
    out, report = rtn_artifact
    result = toolkit_cli("eval", out, "--json", tmp_path / "e.json", "--quiet")
    assert result.code == 0, result.err
    again = json.loads((tmp_path / "e.json").read_text(encoding="utf-8"))["metrics"]
    for stream in ("wikipedia", "news"):
        assert again[stream]["ppl"] == report["metrics"]["after"][stream]["ppl"]


def test_recipe_prune_then_quantize_keeps_zeros_and_reruns(toolkit_cli, fake_model_dir,
                                                           tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("calibration: {samples: 4, seq_len: 32}\neval: {windows: 2, seq_len: 64}\n"
                      "stages:\n  - {method: wanda, sparsity: 0.5}\n"
                      "  - {method: gptq, bits: 4, group_size: 32}\n", encoding="utf-8")
    out = tmp_path / "stacked"
    result = toolkit_cli("run", recipe, "--model", fake_model_dir, "--out", out, "--quiet",
                         "--no-eval")
    assert result.code == 0, result.err
    manifest = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    assert [s["method"] for s in manifest["stages"]] == ["wanda", "gptq"]
    assert manifest["method"]["method"] == "wanda+gptq"
    linears = block_linears(models.load_model(str(out)).module)
    for name, linear in linears.items():
        zeros_per_row = (linear.weight == 0).sum(dim=1)
        assert int(zeros_per_row.min()) >= linear.in_features // 2, name
    assert manifest["sparsity"]["overall"] >= 0.5
    # The artifact's own recipe.yaml repeats the run bit for bit.
    again = tmp_path / "again"
    result = toolkit_cli("run", out / "recipe.yaml", "--model", fake_model_dir, "--out", again,
                         "--quiet", "--no-eval")
    assert result.code == 0, result.err
    first, second = (load_file(str(d / "model.safetensors")) for d in (out, again))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("extra, needle", [
    (["--method", "rtn", "--bits", "5"], "bits 5 is not supported"),
    (["--method", "gptq", "--group-size", "48"], "does not divide the 64 inputs"),
    (["--method", "gptq", "--group-size", "48"], "model.layers.0.self_attn.q_proj"),
    (["--method", "palettize", "--target-bits", "1.5"], "below the smallest"),
    (["--method", "wanda", "--bits", "4"], "--bits does not apply to --method wanda"),
    (["--method", "rtn", "--sparsity", "0.5"], "--sparsity does not apply to --method rtn"),
], ids=["bits", "group", "group-layer", "target", "wanda-bits", "rtn-sparsity"])
def test_bad_quantization_settings(toolkit_cli, fake_model_dir, tmp_path, extra, needle):
    out = tmp_path / "out"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--out", out, *SMALL, *extra)
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert needle in result.err_lines[0]
    assert not out.exists() and [p.name for p in Path(tmp_path).iterdir()] == []


def test_compressing_a_quantized_artifact_is_refused(toolkit_cli, rtn_artifact, tmp_path):
    out, _ = rtn_artifact
    result = toolkit_cli("compress", "--model", out, "--method", "rtn", "--out",
                         tmp_path / "again", *SMALL)
    assert result.code == 2 and "already quantized" in result.err
