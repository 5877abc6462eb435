"""The `rotate` stage through the CLI on the fake Llama (tied embeddings): a rotate + RTN
recipe writes an artifact whose head is untied on disk, that reloads with the logits of the
same stages run in this process, evaluates to the perplexity the run recorded, and exports
to a verified ONNX file; misuse is refused in one line with exit 2."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors import safe_open

import compress
import models
from compress.quant.rtn import RTNConfig
from compress.rotate import RotateConfig
from tests.toolkit.test_cli import SMALL

RECIPE = {"calibration": {"samples": 4, "seq_len": 32, "seed": 0},
          "eval": {"windows": 2, "seq_len": 64},
          "stages": [{"method": "rotate", "seed": 7},
                     {"method": "rtn", "bits": 4, "group_size": 32}]}
TOKENS = torch.randint(3, 259, (2, 20), generator=torch.Generator().manual_seed(0))


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    """fake-llama (tied head) with non-unit norm scales, saved as an HF directory: folding
    the final norm then really makes the head differ from the embeddings, so an artifact
    whose loader re-tied them would give other logits."""
    directory = tmp_path_factory.mktemp("fake-llama-norms")
    loaded = models.create_model("fake-llama")
    with torch.no_grad():
        for name, param in loaded.module.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(torch.linspace(0.5, 1.5, param.numel()))
    loaded.module.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def rotated_artifact(toolkit_cli, tmp_path_factory, source_dir):
    tmp = tmp_path_factory.mktemp("rotate")
    out, report = tmp / "rot-rtn", tmp / "rot-rtn.json"
    result = toolkit_cli("run", _write(tmp / "r.yaml", RECIPE), "--model", source_dir,
                         "--out", out, "--json", report, "--quiet")
    assert result.code == 0, result.err
    return out


def test_artifact_reloads_with_the_in_process_logits(rotated_artifact, source_dir):
    expected = models.load_model(str(source_dir)).module
    assert expected.lm_head.weight is expected.model.embed_tokens.weight
    compress.apply(expected, RotateConfig(seed=7), TOKENS)
    compress.apply(expected, RTNConfig(bits=4, group_size=32), TOKENS)
    loaded = models.load_model(str(rotated_artifact)).module
    with torch.no_grad():
        got, want = loaded(TOKENS).logits, expected(TOKENS).logits
    assert torch.equal(got, want)


def test_head_is_untied_on_disk_and_in_the_report(rotated_artifact):
    config = json.loads((rotated_artifact / "config.json").read_text(encoding="utf-8"))
    assert config["tie_word_embeddings"] is False
    with safe_open(str(rotated_artifact / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        head, table = handle.get_tensor("lm_head.weight"), \
            handle.get_tensor("model.embed_tokens.weight")
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= keys
    assert not torch.equal(head, table)  # the folded final norm
    manifest = json.loads((rotated_artifact / "toolkit.json").read_text(encoding="utf-8"))
    stage = manifest["stages"][0]
    assert stage["method"] == "rotate" and stage["kind"] == "rotate"
    report = stage["report"]
    assert report["untied_head"] is True and report["head_bytes_added"] == head.numel() * 4
    assert (report["rotation"], report["seed"], report["hidden_size"]) == ("hadamard", 7, 64)
    assert set(report["incoherence"]["before"]) == {"mean", "max"}
    loaded = models.load_model(str(rotated_artifact)).module
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight


def test_eval_reproduces_the_recorded_perplexity(rotated_artifact, toolkit_cli, tmp_path):
    report = tmp_path / "eval.json"
    result = toolkit_cli("eval", rotated_artifact, "--json", report, "--quiet")
    assert result.code == 0, result.err
    got = json.loads(report.read_text(encoding="utf-8"))["metrics"]
    manifest = json.loads((rotated_artifact / "toolkit.json").read_text(encoding="utf-8"))
    recorded = manifest["metrics"]["after"]
    assert got["wikipedia"]["ppl"] == pytest.approx(recorded["wikipedia"]["ppl"], rel=1e-6)


def test_onnx_export_of_the_untied_rotated_model_verifies(rotated_artifact, toolkit_cli,
                                                          tmp_path):
    pytest.importorskip("onnxruntime")
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "onnx", "--model", rotated_artifact, "--out",
                         tmp_path / "m.onnx", "--json", report, "--max-context", "48",
                         "--new-tokens", "8", "--quiet")
    assert result.code == 0, result.err
    assert json.loads(report.read_text(encoding="utf-8"))["verdict"] == "passed"


def test_compress_runs_rotate_alone_and_it_exports(toolkit_cli, tmp_path):
    out = tmp_path / "rot"
    result = toolkit_cli("compress", "--model", "fake-llama", "--method", "rotate",
                         "--option", "kind=random", "--out", out, *SMALL)
    assert result.code == 0, result.err
    manifest = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    assert manifest["stages"][0]["report"]["rotation"] == "random"
    pytest.importorskip("onnxruntime")
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "onnx", "--model", out, "--out", tmp_path / "m.onnx",
                         "--json", report, "--max-context", "48", "--new-tokens", "8",
                         "--quiet")
    assert result.code == 0, result.err  # the untied float head is its own tensor
    assert json.loads(report.read_text(encoding="utf-8"))["verdict"] == "passed"


@pytest.mark.parametrize("stages, model, needle", [
    ([{"method": "rotate", "kind": "fourier"}], "fake-llama", "rotation kind 'fourier'"),
    ([{"method": "rtn"}, {"method": "rotate"}], "fake-llama", "make rotate the first stage"),
])
def test_misuse_is_one_line_and_exit_2(toolkit_cli, tmp_path, stages, model, needle):
    recipe = _write(tmp_path / "bad.yaml", {**RECIPE, "stages": stages})
    result = toolkit_cli("run", recipe, "--model", model, "--out", tmp_path / "x", "--quiet")
    assert result.code == 2
    assert len(result.err_lines) == 1 and needle in result.err, result.err
    assert not (tmp_path / "x").exists()


def test_rotate_then_gptq_on_a_mixture_of_experts_lm_exports_and_verifies(toolkit_cli,
                                                                           tmp_path):
    recipe = _write(tmp_path / "moe.yaml", {
        **RECIPE, "stages": [{"method": "rotate"},
                             {"method": "gptq", "bits": 4, "group_size": 32}]})
    out = tmp_path / "moe"
    result = toolkit_cli("run", recipe, "--model", "fake-moe-llm", "--out", out, "--no-eval",
                         "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    assert [s["method"] for s in manifest["recipe"]["stages"]] == ["rotate", "gptq"]
    pytest.importorskip("onnxruntime")
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "onnx", "--model", out, "--out", tmp_path / "m.onnx",
                         "--json", report, "--max-context", "48", "--new-tokens", "8",
                         "--quiet")
    assert result.code == 0, result.err
    assert json.loads(report.read_text(encoding="utf-8"))["verdict"] == "passed"
