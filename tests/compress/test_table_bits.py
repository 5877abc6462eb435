"""The embedding table and head inside the mixed-bit budget (compress.quant.table_bits):
the quantizer is the export's and idempotent, the table's measured KL against an
independent computation, the allocation's choice applied in the model and read back by
`toolkit export`, and the one-line refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import compress
from compress.errors import CompressError
from compress.quant import PalettizeConfig
from compress.quant.sensitivity import OutputKL
from compress.quant.table_bits import (
    TABLE_ENTRY,
    quantize_table,
    table_choices,
    table_parameters,
)
from models import create_model
from models.adapter import decoder_layout


def _calib(n=4, length=24, seed=1):
    return torch.randint(3, 259, (n, length), generator=torch.Generator().manual_seed(seed))


def _config(target: float, **extra) -> PalettizeConfig:
    return PalettizeConfig(target_bits=target, bits_choices=(2, 4, 6), table_bits=(4, 8),
                           sensitivity_windows=2, sensitivity_tokens=24, **extra)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_export_quantizer_nearly_reproduces_its_own_values(bits) -> None:
    """Exports quantize the stored (already quantized) table again: the float16 group
    scales are re-derived and rounded, which moves a few codes by one step, adding far
    less error than the quantization itself did."""
    table = torch.randn(300, 64, generator=torch.Generator().manual_seed(0))
    first = quantize_table(table, bits)
    again = quantize_table(first.dequantize(), bits)
    moved = (first.codes.int() - again.codes.int()).abs()
    assert moved.max() <= 1 and moved.float().mean() < 0.02
    def rms(x):
        return float(x.pow(2).mean().sqrt())
    drift = rms(again.dequantize() - first.dequantize())
    assert drift <= 0.25 * rms(first.dequantize() - table)
    # and row blocks give the whole table's codes (groups never cross rows)
    whole = compress.quant.rtn.rtn_quantize(table, bits, 32, symmetric=False)
    assert torch.equal(whole.codes, first.codes)


def test_table_kl_matches_an_independent_forward_and_falls_with_bits() -> None:
    model = create_model("fake-llama").module.eval()
    layout = decoder_layout(model)
    tokens = _calib(2, 16)
    kl = OutputKL(model, layout, tokens, torch.device("cpu"), torch.float32, 4)
    name, numel, options = table_choices(layout, kl, (4, 8))
    assert name == TABLE_ENTRY and numel == model.model.embed_tokens.weight.numel()
    with torch.no_grad():
        dense = F.log_softmax(model(tokens).logits.float(), -1)
        quantized = copy.deepcopy(model)
        weight = quantized.model.embed_tokens.weight  # tied: the head moves with it
        weight.copy_(quantize_table(weight, 4).dequantize())
        low = F.log_softmax(quantized(tokens).logits.float(), -1)
    expected = F.kl_div(low, dense, log_target=True, reduction="none").sum(-1).mean()
    assert options[4][0] == pytest.approx(float(expected), rel=1e-3)
    assert options[4][0] > options[8][0] > 0
    assert 4 < options[4][1] < 5.5 and 8 < options[8][1] < 9.5  # codes + scales + zeros
    assert torch.equal(model.model.embed_tokens.weight,
                       create_model("fake-llama").module.model.embed_tokens.weight)


@pytest.mark.parametrize(("target", "expected"), [(3.0, 4), (6.0, 8)])
def test_the_allocation_picks_the_tables_width_and_puts_it_on_that_grid(target, expected):
    model = create_model("fake-llama").module.eval()
    report = compress.apply(model, _config(target), _calib())
    allocation = report.allocation
    assert allocation["table_bits"] == expected and TABLE_ENTRY not in allocation["layer_bits"]
    assert allocation["table_weights"] == model.model.embed_tokens.weight.numel()
    assert set(allocation["sensitivity"][TABLE_ENTRY]) == {4, 8}
    weight = model.model.embed_tokens.weight
    dense = create_model("fake-llama").module.model.embed_tokens.weight
    torch.testing.assert_close(weight, quantize_table(dense, expected).dequantize(),
                               rtol=0, atol=0)
    assert abs(allocation["achieved_bits"] - target) < 0.1


def test_an_untied_head_is_counted_and_quantized_with_the_table() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=259, tie_word_embeddings=False)).eval()
    params = table_parameters(decoder_layout(model))
    assert [p.shape for p in params] == [torch.Size([259, 64])] * 2
    dense = [p.detach().clone() for p in params]
    report = compress.apply(model, _config(3.0), _calib())
    bits = report.allocation["table_bits"]
    for weight, before in zip((model.model.embed_tokens.weight, model.lm_head.weight), dense,
                              strict=True):
        torch.testing.assert_close(weight, quantize_table(before, bits).dequantize(),
                                   rtol=0, atol=0)
    assert report.allocation["table_weights"] == 2 * 259 * 64


@pytest.mark.parametrize(("knobs", "words"), [
    ({"table_bits": (4, 8)}, "set target_bits"),
    ({"table_bits": (4, 8), "target_bits": 3.5, "sensitivity": "relative"}, "measured"),
    ({"table_bits": (3,), "target_bits": 3.5}, "table_bits (3,) must list widths out of 4, 8"),
])
def test_bad_table_bits_are_refused_in_one_line(knobs, words) -> None:
    with pytest.raises(CompressError, match=words.replace("(", r"\(").replace(")", r"\)")) \
            as info:
        PalettizeConfig(bits_choices=(2, 4), **knobs)
    assert "\n" not in str(info.value)


def test_export_takes_the_allocations_width_unless_told(toolkit_cli, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "fake-llama", "calibration": {"samples": 4, "seq_len": 32, "seed": 0},
        "stages": [{"method": "palettize", "target_bits": 4.4, "bits_choices": [2, 4, 6],
                    "table_bits": [4, 8], "sensitivity_windows": 2,
                    "sensitivity_tokens": 32}]}), encoding="utf-8")
    out = tmp_path / "art"
    assert toolkit_cli("run", recipe, "--out", out, "--no-eval", "--quiet").code == 0
    bits = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))[
        "stages"][0]["report"]["allocation"]["table_bits"]
    for flags, width in (((), bits), (("--embedding-bits", "4"), 4)):
        report = tmp_path / f"e{width}.json"
        result = toolkit_cli("export", "onnx", "--model", out, "--out",
                             tmp_path / f"m{width}.onnx", "--json", report, "--quiet",
                             "--max-context", "64", "--new-tokens", "4", *flags)
        assert result.code == 0, result.err
        carried = json.loads(report.read_text(encoding="utf-8"))["carried"]
        assert any(f"MatMulNBits {width}-bit, block 32 (quantized at export" in how
                   for how in carried), carried
