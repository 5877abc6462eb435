"""The streaming engine end to end through the CLI, against the in-memory engine.

The in-memory engine sweeps the whole model once per stage; the streaming engine applies
every stage to one block at a time with one activation stream per stage. Both must give
the same weights bit for bit (fp32 checkpoint, so storage does not round), for one-stage
and stacked recipes, and the sharded output must load in transformers and in the
toolkit."""

from __future__ import annotations

import json

import pytest
import torch

from tests.toolkit.streaming_helpers import FAST, all_tensors, tiny_checkpoint


@pytest.fixture(scope="module")
def fp32_checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny fp32 ü")


def _compress(toolkit_cli, model, out, engine, *method):
    result = toolkit_cli("compress", "--model", str(model), *method, "--out", str(out),
                         "--engine", engine, *FAST)
    assert result.code == 0, result.err
    return out


METHODS = {
    "wanda": ["--method", "wanda", "--sparsity", "0.5"],
    "sparsegpt 2:4": ["--method", "sparsegpt", "--sparsity", "0.5", "--pattern", "2:4"],
    "gptq": ["--method", "gptq", "--bits", "4", "--group-size", "32"],  # 32 divides 64 and 576
    "awq": ["--method", "awq", "--bits", "4", "--group-size", "32"],
    "rtn": ["--method", "rtn", "--bits", "8"],
    "magnitude": ["--method", "magnitude", "--sparsity", "0.3"],
    # a format transformers cannot hold: Edge-Toolkit-only shards and their own index
    "palettize": ["--method", "palettize", "--bits", "3", "--group-rows", "16"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_streaming_equals_in_memory(toolkit_cli, fp32_checkpoint, tmp_path, method):
    memory = _compress(toolkit_cli, fp32_checkpoint, tmp_path / "memory", "memory",
                       *METHODS[method])
    stream = _compress(toolkit_cli, fp32_checkpoint, tmp_path / "stream", "streaming",
                       *METHODS[method])
    a, b = all_tensors(memory), all_tensors(stream)
    assert set(a) == set(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert len(list(stream.glob("*-of-*.safetensors"))) == 5  # 4 blocks + the rest
    if method == "palettize":
        assert (stream / "edge_toolkit_quantized.safetensors.index.json").is_file()
        assert not (stream / "model.safetensors.index.json").exists()
    manifest = json.loads((stream / "toolkit.json").read_text())
    assert manifest["engine"]["name"] == "streaming"
    assert manifest["format"] == "edge-toolkit-artifact/2"


def test_stacked_recipe_streams_like_two_in_memory_sweeps(toolkit_cli, fp32_checkpoint,
                                                          tmp_path):
    recipe = tmp_path / "stack.yaml"
    recipe.write_text("calibration: {samples: 2, seq_len: 16, seed: 0}\nstages:\n"
                      "  - {method: wanda, sparsity: 0.5}\n"
                      "  - {method: gptq, bits: 4, group_size: 32}\n")
    outs = {}
    for engine in ("memory", "streaming"):
        outs[engine] = tmp_path / engine
        result = toolkit_cli("run", str(recipe), "--model", str(fp32_checkpoint), "--out",
                             str(outs[engine]), "--engine", engine, "--no-eval", "--quiet")
        assert result.code == 0, result.err
    a, b = all_tensors(outs["memory"]), all_tensors(outs["streaming"])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_output_loads_in_transformers_and_the_toolkit(toolkit_cli, fp32_checkpoint,
                                                              tmp_path):
    from transformers import AutoModelForCausalLM

    from models import load_model

    out = _compress(toolkit_cli, fp32_checkpoint, tmp_path / "out", "streaming",
                    *METHODS["wanda"])
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    ours = load_model(str(out)).module
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)
    zeros = [(p == 0).float().mean().item() for n, p in theirs.named_parameters()
             if "layers" in n and n.endswith("proj.weight")]
    assert min(zeros) == pytest.approx(0.5, abs=0.01)


def test_bf16_checkpoint_stays_bf16(toolkit_cli, tmp_path):
    source = tiny_checkpoint(tmp_path / "bf16", dtype=torch.bfloat16)
    out = _compress(toolkit_cli, source, tmp_path / "out", "streaming", *METHODS["wanda"])
    tensors = all_tensors(out)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    original = all_tensors(source)
    embed = "model.embed_tokens.weight"
    assert torch.equal(tensors[embed], original[embed])  # copied byte for byte
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_auto_engine_streams_above_the_budget(toolkit_cli, fp32_checkpoint, tmp_path):
    result = toolkit_cli("compress", "--model", str(fp32_checkpoint), "--method", "magnitude",
                         "--sparsity", "0.3", "--out", str(tmp_path / "out"),
                         "--memory-budget", "0.001", *FAST)
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "out" / "toolkit.json").read_text())
    assert manifest["engine"]["name"] == "streaming"


def test_methods_that_need_the_whole_model_are_refused_in_one_line(toolkit_cli,
                                                                  fp32_checkpoint, tmp_path):
    result = toolkit_cli("compress", "--model", str(fp32_checkpoint), "--method", "wanda",
                         "--option", "layerwise=owl", "--out", str(tmp_path / "out"),
                         "--engine", "streaming", *FAST)
    assert result.code == 2
    assert len(result.err_lines) == 1 and "--engine memory" in result.err
    assert not (tmp_path / "out").exists()


def test_whole_model_distillation_above_the_budget_points_to_recover(toolkit_cli,
                                                                    fp32_checkpoint,
                                                                    tmp_path):
    recipe = tmp_path / "kd.yaml"
    recipe.write_text("calibration: {samples: 2, seq_len: 16, seed: 0}\nstages:\n"
                      "  - {method: magnitude, sparsity: 0.5}\n  - {method: distill}\n")
    result = toolkit_cli("run", str(recipe), "--model", str(fp32_checkpoint), "--out",
                         str(tmp_path / "out"), "--memory-budget", "0.001", "--quiet")
    assert result.code == 2
    assert len(result.err_lines) == 1 and "method: recover" in result.err


def test_block_recovery_streams_like_the_in_memory_stage(toolkit_cli, fp32_checkpoint,
                                                        tmp_path):
    """rtn then recover: the dense stream's outputs are the targets; the recovered scales
    are what the shard holds, as in the in-memory stage (fp32 forwards in both)."""
    recipe = tmp_path / "recover.yaml"
    recipe.write_text("calibration: {samples: 2, seq_len: 16, seed: 0}\nstages:\n"
                      "  - {method: rtn, bits: 3, group_size: 32}\n"
                      "  - {method: recover, steps: 5, lr: 0.001, scale_lr: 0.01}\n")
    outs = {}
    for engine in ("memory", "streaming"):
        outs[engine] = tmp_path / engine
        result = toolkit_cli("run", str(recipe), "--model", str(fp32_checkpoint), "--out",
                             str(outs[engine]), "--engine", engine, "--forward-dtype",
                             "fp32", "--no-eval", "--quiet")
        assert result.code == 0, result.err
    a, b = all_tensors(outs["memory"]), all_tensors(outs["streaming"])
    assert set(a) == set(b) and [k for k in a if not torch.equal(a[k], b[k])] == []
    stages = json.loads((outs["streaming"] / "toolkit.json").read_text())["stages"]
    recover = stages[-1]["report"]
    assert recover["kind"] == "recover" and len(recover["loss_before"]) == 4
    assert all(after <= before for before, after in
               zip(recover["loss_before"], recover["loss_after"], strict=True))


@pytest.mark.slow  # transformers dequantizes the whole GGUF for the in-memory run: ~1 min
def test_gguf_streams_like_the_in_memory_gguf_load(toolkit_cli, tmp_path):
    """SmolLM2's Q4_1 GGUF is dequantized one tensor at a time when its block is reached
    (models/lazy/gguf_source.py); the result equals compressing transformers' whole-model
    load of the same file."""
    from models.smollm2 import smollm2_gguf_path

    outs = {}
    for engine in ("memory", "streaming"):
        outs[engine] = _compress(toolkit_cli, smollm2_gguf_path(), tmp_path / engine, engine,
                                 "--forward-dtype", "fp32", *METHODS["gptq"])
    a, b = all_tensors(outs["memory"]), all_tensors(outs["streaming"])
    assert set(a) == set(b) and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_before_and_after_perplexity_match_the_in_memory_job(toolkit_cli, fp32_checkpoint,
                                                             tmp_path):
    """The streaming job evaluates block by block, before (the source) and after (its own
    sharded output): the same numbers as the in-memory job."""
    metrics = {}
    for engine in ("memory", "streaming"):
        out = tmp_path / engine
        result = toolkit_cli("compress", "--model", str(fp32_checkpoint), *METHODS["gptq"],
                             "--out", str(out), "--engine", engine, "--calib-samples", "2",
                             "--seq-len", "16", "--eval-windows", "2", "--eval-seq-len", "32",
                             "--quiet")
        assert result.code == 0, result.err
        metrics[engine] = json.loads((out / "toolkit.json").read_text())["metrics"]
    for when in ("before", "after"):
        assert metrics["streaming"][when] == metrics["memory"][when]
