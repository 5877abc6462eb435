"""`--method wanda --recover lora` end to end: LoRA adapters on linears that were only
pruned (dense masked float weights, no packed form). The saved weights equal a plain Wanda
run's bit for bit (the adapters are a side branch, the zeros untouched, after training and
after save/load), the artifact holds fp16 adapters counted apart from the float base,
`toolkit eval` applies them, and ONNX carries them as side branches and verifies."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import models
from models.qformat.lora import LORA_FILE, adapters_of, detach_adapters
from tests.toolkit.test_cli import SMALL
from tests.toolkit.test_lora_cli import _with_large_adapters, adapter_effect

WANDA = ["--method", "wanda", "--sparsity", "0.5"]
LORA = ["--recover", "lora", "--recover-steps", "6", "--lora-rank", "4"]


@pytest.fixture(scope="module")
def pruned_lora(toolkit_cli, fake_model_dir, tmp_path_factory):
    """(wanda+lora artifact, its manifest, its printed summary, a plain wanda artifact)."""
    folder = tmp_path_factory.mktemp("pruned-lora")
    out, plain, report = folder / "wanda-lora", folder / "wanda", folder / "report.json"
    result = toolkit_cli("compress", "--model", fake_model_dir, *WANDA, *LORA, "--out", out,
                         "--json", report, *SMALL)
    assert result.code == 0, result.err
    again = toolkit_cli("compress", "--model", fake_model_dir, *WANDA, "--out", plain, *SMALL)
    assert again.code == 0, again.err
    return out, json.loads(report.read_text(encoding="utf-8")), result.out, plain


def test_the_pruned_weights_are_a_plain_wanda_runs_and_keep_their_zeros(pruned_lora):
    out, manifest, _, plain = pruned_lora
    assert [s["kind"] for s in manifest["stages"]] == ["prune", "lora"]
    saved, wanda = load_file(str(out / "model.safetensors")), load_file(
        str(plain / "model.safetensors"))
    assert saved.keys() == wanda.keys()
    assert all(torch.equal(saved[k], wanda[k]) for k in saved)  # not merged, not trained
    pruned = [k for k in saved if k.endswith("_proj.weight")]
    assert len(pruned) == 14
    for key in pruned:
        assert float((saved[key] == 0).float().mean()) == pytest.approx(0.5, abs=0.01), key
    # Loaded back: adapters attached, weights (and zeros) exactly the saved ones.
    loaded = models.load_model(str(out))
    params = dict(loaded.module.named_parameters())
    assert sorted(adapters_of(loaded.module)) == sorted(k[:-len(".weight")] for k in pruned)
    assert all(torch.equal(params[k], saved[k]) for k in pruned)
    assert manifest["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)


def test_adapters_train_are_fp16_and_counted_apart_from_the_float_base(pruned_lora):
    out, manifest, printed, _ = pruned_lora
    section = manifest["stages"][1]["report"]
    assert section["base"] == "pruned" and section["linears"] == 14 and section["rank"] == 4
    assert section["kl_after"] < section["kl_before"]
    tensors = load_file(str(out / LORA_FILE))
    assert all(t.dtype == torch.float16 for t in tensors.values())
    assert bool(tensors["model.layers.0.mlp.up_proj.lora_B"].abs().sum() > 0)  # B trained
    linears = dict(models.load_model(str(out)).module.named_modules())
    params = sum(t.numel() for t in tensors.values())
    weights = sum(linears[n[:-len(".lora_A")]].weight.numel() for n in tensors
                  if n.endswith(".lora_A"))
    adapter_bits = 16 * params / weights
    assert section["adapter_bits_per_weight"] == pytest.approx(adapter_bits)
    assert section["base_bits_per_weight"] == 32.0  # fp32 float weights, stored dense
    line = next(x for x in printed.splitlines() if x.startswith("wanda+lora"))
    assert f"32.00 + {adapter_bits:.2f} (LoRA r4)" in line


def test_eval_applies_the_adapters(pruned_lora, toolkit_cli):
    out, manifest, _, plain = pruned_lora
    loaded = models.load_model(str(out))
    tokens = torch.arange(40).reshape(2, 20) % loaded.module.config.vocab_size
    with torch.no_grad():
        with_adapters = loaded.module(input_ids=tokens).logits
        detach_adapters(loaded.module)
        without = loaded.module(input_ids=tokens).logits
        wanda = models.load_model(str(plain)).module(input_ids=tokens).logits
    assert not torch.allclose(with_adapters, without)
    assert torch.equal(without, wanda)
    result = toolkit_cli("eval", out, "--eval-windows", "2", "--eval-seq-len", "64",
                         "--quiet")
    assert result.code == 0, result.err
    assert f"{manifest['metrics']['after']['wikipedia']['ppl']:.4g}" in result.out


@pytest.mark.parametrize("engine", ["memory", "streaming"])
def test_onnx_carries_the_adapters_beside_the_pruned_float_weights(pruned_lora, toolkit_cli,
                                                                   tmp_path, engine):
    out, _, _, _ = pruned_lora
    big = _with_large_adapters(out, tmp_path)  # B large: a file without them cannot pass
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "onnx", "--model", big, "--out", tmp_path / "m.onnx",
                         "--engine", engine, "--json", report, "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["carried"]["lora adapter r4 (MatMul side branch)"] == 14
    assert data["verification"]["passed"] and data["verification"]["tokens_match"]
    # The one thing not carried is the sparsity itself (zeros stored dense), not the LoRA.
    assert data["verdict"].startswith("passed, but carried none of: pruned zeros")
    assert "LoRA" not in data["verdict"]
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).graph
    assert sum(1 for i in graph.initializer if i.name.endswith(".lora_A_t")) == 14
    assert adapter_effect(big) > 100 * data["verification"]["logits"]["max_abs_error"]


@pytest.mark.slow
def test_tflite_carries_the_adapters_of_a_pruned_base(pruned_lora, toolkit_cli, tmp_path):
    out, _, _, _ = pruned_lora
    big = _with_large_adapters(out, tmp_path)
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "tflite", "--model", big, "--out", tmp_path / "m.tflite",
                         "--json", report, "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["verification"]["passed"]  # against the model WITH the (large) adapters
    assert data["verdict"].startswith("passed")
    assert "LoRA" not in data["verdict"]
    assert data["carried"]["lora adapters (float side branch)"] >= 1
