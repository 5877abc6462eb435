"""`toolkit eval --engine streaming|auto` against the in-memory evaluation, through the CLI.

The streaming evaluation (toolkit/eval/perplexity_streaming.py) runs the same block calls
on the same batches and sums the NLLs in the same order, so on an fp32 checkpoint (and on
a packed GPTQ artifact, whose dequantised weights are the same in both readers) the
printed table and the --json metrics must be equal to the last bit, not merely close."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.toolkit.streaming_helpers import FAST, tiny_checkpoint

EVAL = ["--eval-windows", "2", "--eval-seq-len", "16", "--quiet"]


@pytest.fixture(scope="module")
def fp32_checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny fp32", layers=2)


@pytest.fixture(scope="module")
def gptq_artifact(toolkit_cli, fp32_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "gptq"
    result = toolkit_cli("compress", "--model", str(fp32_checkpoint), "--out", str(out),
                         "--engine", "streaming", "--method", "gptq", "--bits", "4",
                         "--group-size", "32", *FAST)
    assert result.code == 0, result.err
    assert len(list(out.glob("*-of-*.safetensors"))) == 3  # 2 blocks + the rest
    return out


def _eval(toolkit_cli, model, json_path, *extra):
    result = toolkit_cli("eval", str(model), *EVAL, "--json", str(json_path), *extra)
    assert result.code == 0, result.err
    return result.out, json.loads(json_path.read_text())


@pytest.mark.parametrize("which", ["checkpoint", "gptq artifact"])
def test_streaming_eval_equals_in_memory(toolkit_cli, fp32_checkpoint, gptq_artifact,
                                         tmp_path, which):
    model = fp32_checkpoint if which == "checkpoint" else gptq_artifact
    memory_out, memory = _eval(toolkit_cli, model, tmp_path / "m.json", "--engine", "memory")
    stream_out, stream = _eval(toolkit_cli, model, tmp_path / "s.json",
                               "--engine", "streaming")
    assert stream == memory  # model, protocol and every float of the metrics
    assert stream_out == memory_out  # the printed table too
    assert set(memory["metrics"]) == {"wikipedia", "news"}


def test_auto_streams_above_the_budget(toolkit_cli, fp32_checkpoint, tmp_path,
                                       monkeypatch):
    from toolkit.commands import eval_cmd

    calls = []
    real = eval_cmd.evaluate_directory_streaming

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(eval_cmd, "evaluate_directory_streaming", spy)
    _, memory = _eval(toolkit_cli, fp32_checkpoint, tmp_path / "m.json",
                      "--memory-budget", "100")
    assert calls == []  # fits 100 GB: in memory
    _, streamed = _eval(toolkit_cli, fp32_checkpoint, tmp_path / "s.json",
                        "--memory-budget", "0.001")
    assert calls == [str(fp32_checkpoint)]
    assert streamed == memory


@pytest.mark.parametrize("argv, needle", [
    (["--suite", "kick"], "--suite kick generates answers"),
    (["--compare"], "--compare (the knowledge suite) generates answers"),
])
def test_knowledge_suite_refuses_streaming(toolkit_cli, fp32_checkpoint, argv, needle):
    where = [*argv, str(fp32_checkpoint)] if argv == ["--compare"] \
        else [str(fp32_checkpoint), *argv]
    result = toolkit_cli("eval", *where, "--engine", "streaming", "--quiet")
    assert result.code == 2
    assert len(result.err_lines) == 1 and needle in result.err
    assert "drop --engine streaming" in result.err


@pytest.mark.parametrize("model", ["fake-cnn", "fake-llama"])  # an image model; in memory only
def test_streaming_refuses_a_model_it_cannot_read_by_blocks(toolkit_cli, model):
    result = toolkit_cli("eval", model, "--engine", "streaming", "--quiet")
    assert result.code == 2 and len(result.err_lines) == 1
    assert "use --engine memory" in result.err


def test_streaming_a_checkpoint_with_a_missing_shard(toolkit_cli, fp32_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fp32_checkpoint, broken)
    shard = sorted(broken.glob("*-of-*.safetensors"))[1]
    shard.unlink()
    result = toolkit_cli("eval", broken, "--engine", "streaming", "--quiet")
    assert result.code == 2 and len(result.err_lines) == 1
    assert "missing" in result.err and f"restore the shard {shard.name}" in result.err


def test_bad_memory_budget(toolkit_cli, fp32_checkpoint):
    result = toolkit_cli("eval", str(fp32_checkpoint), "--memory-budget", "0", "--quiet")
    assert result.code == 2 and len(result.err_lines) == 1
    assert "--memory-budget 0.0 must be a positive number" in result.err
