"""Mixed-bit sensitivities (compress.quant.sensitivity): relative and measured against
independent computations, a planted fragile layer that only the measured KL finds, 2/3/4/6
choices, the per-type report, and the one-line refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import compress
from compress.block_stages import stage_for
from compress.errors import CompressError
from compress.quant import PalettizeConfig
from compress.quant.mixed_bits import output_error
from compress.quant.sensitivity import OutputKL, output_energy, relative_error
from models import create_model
from models.adapter import decoder_layout
from tests.compress.linear_inputs import block_linear_inputs, random_calib

FRAGILE = "model.layers.1.self_attn.v_proj"


def test_relative_is_absolute_over_output_energy_on_a_hand_built_layer() -> None:
    weight = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    dequantized = torch.tensor([[1.0, -1.5], [0.0, 3.0]])
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])  # 3 tokens
    hessian = x.t() @ x
    # By hand: dW = [[0, -0.5], [0.5, 0]]; dW x_t per token: (-1, 0.5), (0.5, 0), (-0.5, 1.5)
    absolute = (1 + 0.25 + 0.25 + 0 + 0.25 + 2.25) / 3
    # W x_t: (-3, 6.5), (2, -3), (1, 4.5) -> energy 9 + 42.25 + 4 + 9 + 1 + 20.25
    energy = (9 + 42.25 + 4 + 9 + 1 + 20.25) / 3
    assert output_error(weight, dequantized, hessian, 3) == pytest.approx(absolute)
    assert output_energy(weight, hessian, 3) == pytest.approx(energy)
    assert relative_error(absolute, energy) == pytest.approx(4.0 / 85.5)
    assert relative_error(0.0, 0.0) == 0.0 and relative_error(1.0, 0.0) == float("inf")


def test_relative_sensitivities_of_the_palettizer_match_hooked_inputs() -> None:
    calib = random_calib()
    reports = {}
    for kind in ("absolute", "relative"):
        model = create_model("fake-llama").module
        inputs = block_linear_inputs(model, calib)
        dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in inputs}
        config = PalettizeConfig(target_bits=3.0, bits_choices=(2, 3, 4), iters=5,
                                 sensitivity=kind)
        reports[kind] = compress.apply(model, config, calib).allocation
    assert reports["relative"]["sensitivity_kind"] == "relative"
    for name, x in inputs.items():
        energy = float((x @ dense[name].t()).square().sum())  # tr(W H W^T), n cancels
        n_tokens = x.shape[0]
        for bits in (2, 3, 4):
            absolute = reports["absolute"]["sensitivity"][name][bits]
            assert reports["relative"]["sensitivity"][name][bits] == pytest.approx(
                absolute * n_tokens / energy, rel=1e-4)


def test_measured_kl_of_one_layer_equals_torch_kl_of_the_whole_model() -> None:
    model = create_model("fake-llama").module.eval()
    tokens = random_calib(n=3, length=16)
    kl = OutputKL(model, decoder_layout(model), tokens, torch.device("cpu"), torch.float32, 2)
    linear = model.model.layers[0].mlp.up_proj
    dense = linear.weight.detach().clone()
    noisy = dense + 0.05 * torch.randn(dense.shape, generator=torch.Generator().manual_seed(3))
    measured = kl.kl_with(0, linear, noisy)
    assert torch.equal(linear.weight, dense)  # restored
    with torch.no_grad():
        p = model(input_ids=tokens).logits.reshape(-1, 259)
        linear.weight.copy_(noisy)
        q = model(input_ids=tokens).logits.reshape(-1, 259)
        linear.weight.copy_(dense)
    expected = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), log_target=True,
                        reduction="batchmean")
    assert measured > 0 and measured == pytest.approx(float(expected), rel=1e-4)


def _planted(model):
    """Block 1's value projection shrunk 30x and its output projection grown 240x: the
    attention output is 8x the dense model's and dominates the residual stream, so v_proj
    decides the logits, while tr(dW H dW^T) of v_proj shrinks 900x."""
    attn = model.model.layers[1].self_attn
    with torch.no_grad():
        attn.v_proj.weight /= 30.0
        attn.o_proj.weight *= 240.0
    return model


def _whole_model_kl(dense, quantized, tokens) -> float:
    with torch.no_grad():
        p = F.log_softmax(dense(input_ids=tokens).logits.reshape(-1, 259), -1)
        q = F.log_softmax(quantized(input_ids=tokens).logits.reshape(-1, 259), -1)
    return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))


def test_measured_gives_the_planted_fragile_layer_the_bits_absolute_denies_it() -> None:
    calib, bits, kls, sensitivity = random_calib(), {}, {}, {}
    dense = _planted(create_model("fake-llama").module).eval()
    for kind in ("absolute", "measured"):
        model = _planted(create_model("fake-llama").module)
        config = PalettizeConfig(target_bits=2.55, bits_choices=(2, 4), iters=5,
                                 sensitivity=kind)
        allocation = compress.apply(model, config, calib).allocation
        bits[kind], sensitivity[kind] = allocation["layer_bits"], allocation["sensitivity"]
        kls[kind] = _whole_model_kl(dense, model.eval(), random_calib(n=8, seed=5))
    at_two = {kind: sorted(s, key=lambda n, s=s: s[n][2]) for kind, s in sensitivity.items()}
    assert at_two["absolute"].index(FRAGILE) < 3  # absolute: among the least sensitive
    assert at_two["measured"][-1] == FRAGILE or at_two["measured"][-2] == FRAGILE
    assert bits["absolute"][FRAGILE] == 2 and bits["measured"][FRAGILE] == 4
    # The point of it: the whole model moves less from the dense one, on other tokens.
    assert kls["measured"] < kls["absolute"]


@pytest.mark.parametrize("kind", ["absolute", "relative", "measured"])
def test_choices_2_3_4_6_reach_the_target_and_the_report_counts_every_layer(kind) -> None:
    model = create_model("fake-llama").module
    config = PalettizeConfig(target_bits=3.5, bits_choices=(6, 2, 4, 3), iters=5,
                             sensitivity=kind)
    report = compress.apply(model, config, random_calib())
    allocation = report.manifest_section()["allocation"]
    assert 3.45 <= allocation["achieved_bits"] <= 3.5 + 1e-9
    assert report.bits_per_weight == pytest.approx(allocation["achieved_bits"], abs=1e-9)
    layer_bits = allocation["layer_bits"]
    assert len(layer_bits) == 14 and set(layer_bits.values()) <= {2, 3, 4, 6}
    for name, palette in report.quantized.items():
        assert palette.bits == layer_bits[name] and palette.lut.shape[1] == 1 << palette.bits
    by_type = allocation["by_type"]
    assert sum(n for counts in by_type.values() for n in counts.values()) == 14
    for layer_type, counts in by_type.items():
        names = [n for n in layer_bits if n.endswith("." + layer_type)]
        assert len(names) == 2  # one per block of the fake Llama
        for bits, count in counts.items():
            assert count == sum(layer_bits[n] == int(bits) for n in names)
    if kind == "measured":
        assert allocation["kl_tokens"] == 4 * 24  # fewer than the default 4 x 256 exist
        assert all(s[6] == 0.0 for s in allocation["sensitivity"].values())


@pytest.mark.parametrize("knobs, message", [
    ({"sensitivity": "kl"}, "sensitivity 'kl' is unknown: use one of absolute, relative, "
                            "measured"),
    ({"sensitivity_windows": 0}, "sensitivity_windows 0 must be a positive integer"),
    ({"sensitivity_tokens": 2.5}, "sensitivity_tokens 2.5 must be a positive integer"),
])
def test_bad_sensitivity_knobs_are_one_line_errors(knobs, message) -> None:
    with pytest.raises(CompressError) as info:
        PalettizeConfig(target_bits=3.0, **knobs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_streaming_refuses_the_measured_pre_pass_in_one_line() -> None:
    config = PalettizeConfig(target_bits=3.0, sensitivity="measured")
    with pytest.raises(CompressError, match="sensitivity pre-pass over the whole model") as info:
        stage_for(config, n_blocks=2, calib_tokens=96, forward_dtype=torch.float32,
                  seconds={})
    assert "\n" not in str(info.value) and "--engine memory" in str(info.value)


def test_sensitivity_knobs_round_trip_through_the_recipe_form() -> None:
    config = PalettizeConfig(target_bits=3.7, sensitivity="measured", sensitivity_windows=2,
                             sensitivity_tokens=128)
    again = compress.MethodConfig.from_dict(config.to_dict())
    assert again == config and again.sensitivity == "measured"
    assert again.sensitivity_windows == 2 and again.sensitivity_tokens == 128
