"""Mixed bit-widths on the integer grid (rtn, gptq; compress.quant.mixed_int and
mixed_plan) on the fake Llama: the budget and each layer's width, errors measured from
hooked inputs (not the pre-pass's Hessians) falling with the bits a layer got, RTN's
stored codes equal to a fresh round-to-nearest at that width, GPTQ allocated from the
same RTN sensitivities and no worse than RTN where both see dense inputs, the table in
the budget, and the one-line refusals."""

from __future__ import annotations

import pytest
import torch

import compress
from compress.block_stages import stage_for
from compress.config import MethodConfig
from compress.errors import CompressError
from compress.quant import GPTQConfig, RTNConfig
from compress.quant.rtn import rtn_quantize
from models import create_model
from tests.compress.linear_inputs import block_linear_inputs, random_calib

LINEARS = 14  # 7 per block of the fake Llama


def _error(weight, dequantized, x) -> float:
    """||(W - W_hat) X^T||_F^2 / tokens: the output error, straight from the samples."""
    delta = (weight.double() - dequantized.double()) @ x.double().T
    return float(delta.square().sum()) / x.shape[0]


def _stored_bits(report) -> float:
    """Bits per weight of the packed tensors themselves (codes, fp16 scales, zero points)."""
    stored, weights = 0, 0
    for name, packed in report.quantized.items():
        stored += sum(t.numel() * t.element_size() for t in packed.to_tensors(name).values())
        weights += packed.shape[0] * packed.shape[1]
    return 8 * stored / weights


def test_rtn_mixed_meets_the_budget_and_a_layer_with_more_bits_has_lower_error() -> None:
    model, calib = create_model("fake-llama").module, random_calib()
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and ".layers." in n}
    inputs = block_linear_inputs(model, calib)
    config = RTNConfig(target_bits=4.4, bits_choices=(3, 4, 6), group_size=32,
                       sensitivity="absolute")
    report = compress.apply(model, config, calib)
    allocation = report.manifest_section()["allocation"]
    layer_bits = allocation["layer_bits"]
    assert 4.35 <= allocation["achieved_bits"] <= 4.4 + 1e-9
    assert _stored_bits(report) == pytest.approx(allocation["achieved_bits"], abs=1e-12)
    assert report.bits_per_weight == pytest.approx(allocation["achieved_bits"], abs=1e-12)
    assert len(layer_bits) == LINEARS and len(set(layer_bits.values())) >= 2
    modules = dict(model.named_modules())
    for name, packed in report.quantized.items():
        bits = layer_bits[name]
        assert packed.bits == bits and packed.group_size == 32
        # The main pass stores what round-to-nearest gives at that width (the pre-pass's
        # codes, kept) and writes it into the model.
        fresh = rtn_quantize(dense[name], bits, 32, symmetric=False)
        assert torch.equal(packed.codes, fresh.codes)
        assert torch.equal(modules[name].weight.data, packed.dequantize())
        # Every width's error, from the hooked samples: it falls with the bits, and the
        # stored layer's is the one at its width, which the allocation recorded.
        errors = {b: _error(dense[name], rtn_quantize(dense[name], b, 32, False).dequantize(),
                            inputs[name]) for b in (3, 4, 6)}
        assert errors[3] > errors[4] > errors[6]
        assert _error(dense[name], packed.dequantize(), inputs[name]) == pytest.approx(
            errors[bits], rel=1e-4)
        for b in (3, 4, 6):
            assert allocation["sensitivity"][name][b] == pytest.approx(errors[b], rel=1e-4)


def test_gptq_mixed_end_to_end_allocates_like_rtn_and_beats_it_on_dense_inputs() -> None:
    calib, runs = random_calib(), {}
    for config in (RTNConfig(target_bits=4.0, group_size=32, sensitivity="relative"),
                   GPTQConfig(target_bits=4.0, group_size=32, sensitivity="relative")):
        model = create_model("fake-llama").module
        dense = {n: m.weight.detach().clone() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear)}
        inputs = block_linear_inputs(model, calib)
        report = compress.apply(model, config, calib)
        runs[config.method] = report
        allocation = report.allocation
        assert 3.95 <= allocation["achieved_bits"] <= 4.0 + 1e-9
        assert report.bits_per_weight == pytest.approx(allocation["achieved_bits"], abs=1e-12)
        assert allocation["choices"] == [3, 4, 6] and allocation["sensitivity_kind"] == "relative"
        modules = dict(model.named_modules())
        for name, packed in report.quantized.items():
            assert packed.bits == allocation["layer_bits"][name]
            assert torch.equal(modules[name].weight.data, packed.dequantize())
    rtn, gptq = runs["rtn"], runs["gptq"]
    # The same RTN pre-pass on the same dense model: the same widths.
    assert gptq.allocation["layer_bits"] == rtn.allocation["layer_bits"]
    assert gptq.allocation["sensitivity"] == rtn.allocation["sensitivity"]
    # Block 0's linears see the dense inputs in both runs: GPTQ's error there is RTN's at
    # most (its objective), and the codes differ (it ran, not RTN under its name).
    for name in (n for n in gptq.quantized if ".layers.0." in n):
        x = inputs[name]
        gptq_error = _error(dense[name], gptq.quantized[name].dequantize(), x)
        rtn_error = _error(dense[name], rtn.quantized[name].dequantize(), x)
        assert gptq_error <= rtn_error * 1.001, name
        assert not torch.equal(gptq.quantized[name].codes, rtn.quantized[name].codes)


def test_measured_rtn_mix_with_the_table_in_the_budget() -> None:
    model = create_model("fake-llama").module
    config = RTNConfig(target_bits=5.0, bits_choices=(3, 4, 6), group_size=32,
                       table_bits=(4, 8), sensitivity_windows=2, sensitivity_tokens=24)
    allocation = compress.apply(model, config, random_calib()).allocation
    assert allocation["sensitivity_kind"] == "measured" and allocation["table_bits"] in (4, 8)
    assert allocation["kl_tokens"] == 2 * 24 and 4.95 <= allocation["achieved_bits"] <= 5.0
    layers = {n: s for n, s in allocation["sensitivity"].items() if n != "table"}
    assert len(layers) == LINEARS and all(s[6] == 0.0 for s in layers.values())  # largest
    assert set(allocation["sensitivity"]["table"]) == {4, 8}
    table = model.model.embed_tokens.weight.detach()
    for row in table[:8]:  # on the chosen width's grid: at most 2^bits values per group
        for group in row.split(32):
            assert group.unique().numel() <= 1 << allocation["table_bits"]


@pytest.mark.parametrize("config_type", [RTNConfig, GPTQConfig])
@pytest.mark.parametrize(("knobs", "message"), [
    ({"target_bits": 4.0, "bits_choices": (4,)},
     "bits_choices (4,) needs at least two bit-widths to mix, e.g. (2, 4); for one width set "
     "bits and drop target_bits"),
    ({"target_bits": 4.0, "bits_choices": (4, 5)},
     "bits_choices entry 5 is not supported by {method}: use one of 2, 3, 4, 6, 8"),
    ({"target_bits": 3.1, "bits_choices": (3, 4)},
     "target 3.1 bits is below the smallest choice's cost (3 bits store 3.297 bits per weight "
     "with an fp16 scale and a 3-bit zero point per 64 inputs): raise target_bits or add a "
     "smaller choice"),
    ({"target_bits": 6.4, "symmetric": True},
     "target 6.4 bits is above the largest choice's cost (6 bits store 6.250 bits per weight "
     "with an fp16 scale per 64 inputs): lower target_bits or add a larger choice"),
    ({"target_bits": "4"}, "target_bits '4' must be a number, e.g. 3.7"),
    ({"table_bits": (4, 8)}, "table_bits is a choice of the mixed-bit allocation"),
    ({"target_bits": 4.0, "backend": "nncf"},
     "backend nncf quantizes every layer at one width: drop target_bits for one --bits, or "
     "use --backend toolkit for mixed bit-widths"),
])
def test_bad_mixed_knobs_are_one_line_errors(config_type, knobs, message) -> None:
    with pytest.raises(CompressError) as info:
        config_type(**knobs)
    text = str(info.value)
    assert text.startswith(message.format(method=config_type.method)) and "\n" not in text


def test_per_channel_cost_is_checked_after_the_pre_pass() -> None:
    # One group per row: its scale costs 16 / in bits, known only per layer.
    config = RTNConfig(target_bits=3.05, bits_choices=(3, 4), group_size=None,
                       sensitivity="absolute")
    with pytest.raises(CompressError, match=r"target 3\.05 bits is below the smallest choice "
                                            r"\(3 bits, 3\.26. stored with its scales or tables\)"):
        compress.apply(create_model("fake-llama").module, config, random_calib())


@pytest.mark.parametrize("config_type", [RTNConfig, GPTQConfig])
def test_target_bits_without_calibration_names_the_fix(config_type) -> None:
    with pytest.raises(CompressError) as info:
        compress.apply(create_model("fake-llama").module,
                       config_type(target_bits=4.0, group_size=32), None)
    assert str(info.value) == (f"{config_type.method} target_bits needs calibration token ids "
                               "[N, L] for its sensitivity pre-pass: pass calibration data or "
                               "drop target_bits (one --bits for every layer)")


@pytest.mark.parametrize("config_type", [RTNConfig, GPTQConfig])
def test_streaming_refuses_mixed_integer_bits_in_one_line(config_type) -> None:
    with pytest.raises(CompressError, match="sensitivity pre-pass over the whole model") as info:
        stage_for(config_type(target_bits=4.0), n_blocks=2, calib_tokens=96,
                  forward_dtype=torch.float32, seconds={})
    assert "\n" not in str(info.value) and "--engine memory" in str(info.value)


def test_knobs_round_trip_and_what_calibration_collects() -> None:
    config = RTNConfig(target_bits=4.2, bits_choices=(6, 3, 4), sensitivity="relative",
                       table_bits=None)
    assert config.bits_choices == (3, 4, 6)
    assert MethodConfig.from_dict(config.to_dict()) == config
    assert RTNConfig().needs == frozenset() and RTNConfig(target_bits=4.0).needs == {"hessian"}
    assert GPTQConfig().needs == {"hessian"}
    uniform = RTNConfig(bits=6, group_size=32)  # 6-bit codes on the grid, one width
    report = compress.apply(create_model("fake-llama").module, uniform, None)
    assert {q.bits for q in report.quantized.values()} == {6} and report.allocation is None
    assert report.bits_per_weight == pytest.approx(6 + (16 + 6) / 32)
