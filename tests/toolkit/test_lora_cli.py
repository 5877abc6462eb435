"""`--recover lora` end to end: compress with RTN 2-bit + LoRA, the artifact holds fp16
adapters beside the packed weights and reloads to identical logits, `toolkit eval` sees
the adapters, ONNX carries them (onnxruntime = PyTorch with adapters), and misuse is
refused in one line with exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

import models
from models.qformat.lora import LORA_FILE, adapters_of, detach_adapters
from tests.toolkit.test_cli import SMALL

LORA = ["--method", "rtn", "--bits", "2", "--option", "group_size=16", "--recover", "lora",
        "--recover-steps", "6", "--lora-rank", "4"]


@pytest.fixture(scope="module")
def lora_artifact(toolkit_cli, fake_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "rtn2-lora"
    report = out.parent / "report.json"
    result = toolkit_cli("compress", "--model", fake_model_dir, *LORA, "--out", out,
                         "--json", report, *SMALL)
    assert result.code == 0, result.err
    return out, json.loads(report.read_text(encoding="utf-8")), result.out


def test_artifact_holds_fp16_adapters_counted_apart(lora_artifact):
    out, manifest, printed = lora_artifact
    assert [s["method"] for s in manifest["recipe"]["stages"]] == ["rtn", "lora"]
    section = manifest["stages"][1]["report"]
    assert section["kind"] == "lora" and section["rank"] == 4 and section["steps"] == 6
    with safe_open(str(out / LORA_FILE), framework="pt") as handle:
        names = list(handle.keys())
        meta = json.loads(handle.metadata()["edge_toolkit.lora"])
        tensors = {n: handle.get_tensor(n) for n in names}
    assert meta["rank"] == 4 and meta["scale"] == section["scale"] == 1.0
    assert len(names) == 2 * section["linears"] == 28
    assert all(t.dtype == torch.float16 for t in tensors.values())
    a = tensors["model.layers.0.mlp.up_proj.lora_A"]
    b = tensors["model.layers.0.mlp.up_proj.lora_B"]
    assert a.shape[0] == 4 and b.shape[1] == 4 and bool(b.abs().sum() > 0)  # B trained
    # Adapter bits: 16 bits x parameters / compressed weights, independent of the toolkit.
    loaded = models.load_model(str(out))
    linears = dict(loaded.module.named_modules())
    params = sum(tensors[n].numel() for n in names)
    weights = sum(linears[n[:-len(".lora_A")]].weight.numel() for n in names
                  if n.endswith(".lora_A"))
    assert section["adapter_bits_per_weight"] == pytest.approx(16 * params / weights)
    line = next(x for x in printed.splitlines() if x.startswith("rtn+lora"))
    assert f"+ {16 * params / weights:.2f} (LoRA r4)" in line


def test_reload_gives_identical_logits_and_eval_uses_the_adapters(lora_artifact,
                                                                  toolkit_cli):
    out, manifest, _ = lora_artifact
    loaded = models.load_model(str(out))
    assert len(adapters_of(loaded.module)) == 14
    tokens = torch.arange(40).reshape(2, 20) % loaded.module.config.vocab_size
    with torch.no_grad():
        with_adapters = loaded.module(input_ids=tokens).logits
        again = models.load_model(str(out)).module(input_ids=tokens).logits
        assert torch.equal(with_adapters, again)
        detach_adapters(loaded.module)
        without = loaded.module(input_ids=tokens).logits
    assert not torch.allclose(with_adapters, without)
    result = toolkit_cli("eval", out, "--eval-windows", "2", "--eval-seq-len", "64",
                         "--quiet")
    assert result.code == 0, result.err
    wiki = manifest["metrics"]["after"]["wikipedia"]["ppl"]
    assert f"{wiki:.4g}" in result.out


def _with_large_adapters(out, tmp_path):
    """A copy of the artifact whose adapters' B are large random fp16 values, so a file
    without the adapters (or a reference without them) could not match."""
    from models.qformat.lora import save_adapters

    big = tmp_path / "big"
    shutil.copytree(out, big)
    loaded = models.load_model(str(out))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for adapter in adapters_of(loaded.module).values():
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g).half().float())
    (big / LORA_FILE).unlink()
    save_adapters(big / LORA_FILE, adapters_of(loaded.module))
    return big


def adapter_effect(artifact) -> float:
    """How far the artifact's adapters move its last-token logits (largest change)."""
    loaded = models.load_model(str(artifact))
    tokens = torch.tensor([[3, 17, 42, 7, 99]])
    with torch.no_grad():
        with_adapters = loaded.module(input_ids=tokens).logits[0, -1]
        detach_adapters(loaded.module)
        without = loaded.module(input_ids=tokens).logits[0, -1]
    return float((with_adapters - without).abs().max())


@pytest.mark.parametrize("engine", ["memory", "streaming"])
def test_onnx_export_carries_the_adapters_and_matches_pytorch_with_them(lora_artifact,
                                                                        toolkit_cli,
                                                                        tmp_path, engine):
    out, _, _ = lora_artifact
    big = _with_large_adapters(out, tmp_path)
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "onnx", "--model", big, "--out", tmp_path / "m.onnx",
                         "--engine", engine, "--json", report, "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["verdict"] == "passed"
    assert data["carried"]["lora adapter r4 (MatMul side branch)"] == 14
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).graph
    assert sum(1 for i in graph.initializer if i.name.endswith(".lora_A_t")) == 14
    # Verification ran the file in onnxruntime against PyTorch WITH the (large) adapters
    # (streamed: the lazily read reference attaches them too).
    verification = data["verification"]
    assert verification["passed"] and verification["tokens_match"]
    # The adapters move the logits far more than the file's error: it carries them.
    assert adapter_effect(big) > 100 * verification["logits"]["max_abs_error"]


def test_truncated_or_misshapen_adapter_file_is_refused_in_one_line(lora_artifact,
                                                                    toolkit_cli, tmp_path):
    out, _, _ = lora_artifact
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = (broken / LORA_FILE).read_bytes()
    (broken / LORA_FILE).write_bytes(data[:len(data) // 2])
    result = toolkit_cli("eval", broken, "--eval-windows", "1", "--eval-seq-len", "16")
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert LORA_FILE in result.err and "truncated" in result.err
    # Well-formed but the wrong shape for the model.
    from safetensors.torch import save_file

    with safe_open(str(out / LORA_FILE), framework="pt") as handle:
        tensors = {n: handle.get_tensor(n) for n in handle.keys()}
        meta = handle.metadata()
    name = "model.layers.0.mlp.up_proj.lora_A"
    tensors[name] = torch.zeros(4, 3, dtype=torch.float16)
    save_file(tensors, str(broken / LORA_FILE), metadata=meta)
    result = toolkit_cli("eval", broken, "--eval-windows", "1", "--eval-seq-len", "16")
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert "model.layers.0.mlp.up_proj" in result.err and "expected float16" in result.err


def test_lora_on_a_dense_model_or_first_or_with_bad_knobs_exits_2(toolkit_cli,
                                                                 fake_model_dir, tmp_path):
    recipe = tmp_path / "lora-only.yaml"
    recipe.write_text("stages:\n  - {method: lora, steps: 2}\n", encoding="utf-8")
    result = toolkit_cli("run", recipe, "--model", fake_model_dir, "--out", tmp_path / "a",
                         "--quiet")
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert "lora needs linears compressed by an earlier stage" in result.err
    recipe.write_text("stages:\n  - {method: lora}\n  - {method: rtn, bits: 4}\n",
                      encoding="utf-8")
    result = toolkit_cli("run", recipe, "--model", fake_model_dir, "--out", tmp_path / "b")
    assert result.code == 2 and "make lora the last stage" in result.err
    # Rotation alone compresses nothing (a pruning or quantization stage would count:
    # tests/toolkit/test_lora_pruned_cli.py).
    recipe.write_text("stages:\n  - {method: rotate}\n  - {method: lora, steps: 2}\n",
                      encoding="utf-8")
    result = toolkit_cli("run", recipe, "--model", fake_model_dir, "--out", tmp_path / "c",
                         "--quiet")
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert "lora needs linears compressed" in result.err
    assert "quantization (rtn, gptq, awq, palettize) or pruning (wanda" in result.err
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "rtn",
                         "--lora-rank", "4", "--out", tmp_path / "d", *SMALL)
    assert result.code == 2 and "--lora-rank needs --recover lora" in result.err
    recipe.write_text("stages:\n  - {method: rtn}\n  - {method: lora, rank: -1}\n",
                      encoding="utf-8")
    result = toolkit_cli("run", recipe, "--model", fake_model_dir, "--out", tmp_path / "e")
    assert result.code == 2 and "lora rank -1 must be an integer >= 1" in result.err
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_streaming_eval_applies_the_adapters_like_the_in_memory_one(lora_artifact,
                                                                    toolkit_cli, tmp_path):
    out, _, _ = lora_artifact
    results = {}
    for engine in ("memory", "streaming"):
        report = tmp_path / f"{engine}.json"
        result = toolkit_cli("eval", out, "--engine", engine, "--eval-windows", "1",
                             "--eval-seq-len", "16", "--json", report, "--quiet")
        assert result.code == 0, result.err
        results[engine] = json.loads(report.read_text(encoding="utf-8"))
    for stream in ("wikipedia", "news"):
        a = results["memory"]["metrics"][stream]["ppl"]
        b = results["streaming"]["metrics"][stream]["ppl"]
        assert b == pytest.approx(a, rel=1e-5)
    # and the adapters count: without their file the streamed numbers move
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    (bare / LORA_FILE).unlink()
    report = tmp_path / "bare.json"
    assert toolkit_cli("eval", bare, "--engine", "streaming", "--eval-windows", "1",
                       "--eval-seq-len", "16", "--json", report, "--quiet").code == 0
    without = json.loads(report.read_text(encoding="utf-8"))["metrics"]["wikipedia"]["ppl"]
    assert without != pytest.approx(results["streaming"]["metrics"]["wikipedia"]["ppl"],
                                    rel=1e-6)


@pytest.mark.slow
def test_tflite_carries_the_adapters_and_matches_pytorch_with_them(lora_artifact, toolkit_cli,
                                                                   tmp_path):
    out, _, _ = lora_artifact
    big = _with_large_adapters(out, tmp_path)
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "tflite", "--model", big, "--out", tmp_path / "m.tflite",
                         "--json", report, "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["verdict"] == "passed" and "verified_against" not in data
    assert data["carried"]["lora adapters (float side branch)"] == 14
    assert not any(row["layer"] == "lora adapters" for row in data["dropped"])
    # Large adapters: equal tokens and logits mean the file computes WITH them.
    verification = data["verification"]
    assert verification["passed"] and verification["tokens_match"]


def test_every_streamed_writer_carries_the_adapters(lora_artifact):
    """The chunked tflite writer too (tests/toolkit/test_lora_tflite_chunks.py runs it)."""
    from types import SimpleNamespace

    from export.llm.streamed import StreamedArtifact
    from export.lora_carry import lora_plan
    from export.registry import get_exporter

    out, _, _ = lora_artifact
    streamed = StreamedArtifact(SimpleNamespace(path=out), str(out), None)
    for target in ("tflite", "coreml", "onnx"):
        plan = lora_plan(get_exporter(target), streamed)
        assert plan.linears == 14 and plan.carried and plan.why is None


@pytest.mark.slow
def test_coreml_carries_the_adapters(lora_artifact, toolkit_cli, tmp_path):
    """Core ML runs only on macOS: the package is converted with the side branches and
    checked structurally; the traced decoder's numerics with adapters are checked in
    tests/export/test_coreml_chunks.py."""
    out, _, _ = lora_artifact
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "coreml", "--model", out, "--out", tmp_path / "m.mlpackage",
                         "--json", report, "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["carried"]["lora adapters (float side branch)"] == 14
    assert "LoRA" not in data["verdict"] and "verified_against" not in data
