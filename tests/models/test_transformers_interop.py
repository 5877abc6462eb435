"""Quantized LLM artifacts from `toolkit compress` load in plain transformers with the
weights Edge Toolkit evaluates (issue 14, "Interop"), or, where compressed-tensors cannot
hold them, fail to load there instead of loading random linears.

The reference is `models.load_model(DIR).module`, what `toolkit eval DIR` runs; the other
side is `transformers.AutoModelForCausalLM.from_pretrained(DIR)` with no arguments, which
dequantizes through the compressed-tensors package, code independent of ours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import models
from models.families.llm_weights import EDGE_ONLY_FILE, WEIGHTS_FILE, write_quantized_weights
from tests.toolkit.test_cli import SMALL

pytest.importorskip("compressed_tensors")

TOKENS = torch.tensor([[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 2]])
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "artifacts_v1"
LOADABLE = {
    "rtn4-g32-asym": ["--method", "rtn", "--bits", "4", "--group-size", "32"],
    "rtn8-channel-sym": ["--method", "rtn", "--bits", "8", "--group-size", "channel",
                         "--symmetric"],
    "gptq4-g32": ["--method", "gptq", "--bits", "4", "--group-size", "32"],
}


def compress(toolkit_cli, model: Path, out: Path, args: list[str]):
    result = toolkit_cli("compress", "--model", model, *args, "--out", out, *SMALL)
    assert result.code == 0, result.err
    return result


def transformers_model(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory).eval()


def logits(module) -> torch.Tensor:
    with torch.no_grad():
        return module(TOKENS).logits


@pytest.fixture(scope="module", params=sorted(LOADABLE))
def loadable(request, toolkit_cli, fake_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("interop") / request.param
    result = compress(toolkit_cli, fake_model_dir, out, LOADABLE[request.param])
    return out, result


def test_transformers_loads_the_weights_toolkit_eval_runs(loadable):
    out, result = loadable
    ours = models.load_model(str(out))
    theirs = transformers_model(out)
    assert ours.quantized
    modules = dict(theirs.named_modules())
    for name, packed in ours.quantized.items():
        # compressed-tensors dequantized our tensors to exactly our weights.
        assert torch.equal(modules[name].weight.detach(), packed.dequantize()), name
    torch.testing.assert_close(logits(theirs), logits(ours.module), rtol=0, atol=1e-5)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    manifest = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    assert manifest["interop"]["transformers"] is True
    assert "loads in transformers too" in result.out
    # The float module Edge Toolkit hands on must not claim to be quantized when saved.
    assert getattr(ours.module.config, "quantization_config", None) is None


def test_compressed_tensors_checkpoint_we_did_not_write_is_refused_clearly(loadable, tmp_path):
    """Without the layout in the file's metadata the packed tensors are not ours to
    guess: one ModelError that says how to get a float copy."""
    from safetensors.torch import load_file, save_file

    out, _ = loadable
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    (foreign / "toolkit.json").unlink()
    save_file(load_file(str(foreign / WEIGHTS_FILE)), str(foreign / WEIGHTS_FILE),
              metadata={"format": "pt"})
    with pytest.raises(models.ModelError, match="compressed-tensors checkpoint that Edge "
                                                "Toolkit did not write.*dequantize=True"):
        models.load_model(str(foreign))


def test_palettized_artifact_refuses_transformers_but_loads_in_toolkit(
        toolkit_cli, fake_model_dir, tmp_path):
    out = tmp_path / "pal4"
    result = compress(toolkit_cli, fake_model_dir, out, ["--method", "palettize", "--bits", "4"])
    assert not (out / WEIGHTS_FILE).exists() and (out / EDGE_ONLY_FILE).is_file()
    with pytest.raises(OSError, match=WEIGHTS_FILE):
        transformers_model(out)
    manifest = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    assert manifest["interop"] == {"transformers": False,
                                   "reason": "palettized weights have no transformers format"}
    assert "loads in Edge Toolkit only: palettized" in result.out
    assert "loads in Edge Toolkit only" in (out / "README.md").read_text(encoding="utf-8")
    assert "quantization_config" not in json.loads((out / "config.json").read_text("utf-8"))
    loaded = models.load_model(str(out))
    modules = dict(loaded.module.named_modules())
    assert loaded.quantized and all(
        torch.equal(modules[name].weight, packed.dequantize())
        for name, packed in loaded.quantized.items())


def test_old_layout_still_loads_and_rewrites_exactly_as_compressed_tensors(tmp_path):
    """A format /1 artifact (packed codes in Edge Toolkit's own layout inside
    model.safetensors) loads; written again it is a compressed-tensors checkpoint that
    both loaders read back to the same codes, scales and zero points."""
    old = models.load_model(str(FIXTURES / "llm-rtn4"))
    assert old.quantized
    new = tmp_path / "rewritten"
    new.mkdir()
    write_quantized_weights(new, old.module, old.quantized)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "llm-rtn4" / name, new / name)
    again = models.load_model(str(new))
    assert set(again.quantized) == set(old.quantized)
    for name, packed in old.quantized.items():
        back = again.quantized[name]
        assert torch.equal(back.codes, packed.codes) and torch.equal(back.scales, packed.scales)
        assert (back.zeros is None and packed.zeros is None) or torch.equal(back.zeros,
                                                                             packed.zeros)
        assert (back.bits, back.group_size) == (packed.bits, packed.group_size)
    reference = logits(old.module)
    torch.testing.assert_close(logits(again.module), reference, rtol=0, atol=0)
    torch.testing.assert_close(logits(transformers_model(new)), reference, rtol=0, atol=1e-5)
