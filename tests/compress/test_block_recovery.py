"""Block-wise recovery (`method: recover`): after RTN, palettization or magnitude pruning
on the fake Llama, each block's output moves towards the dense block's, measured here
independently (forward hooks on both full models, not the toolkit's block engine); codes,
indices and pruned zeros are untouched; two runs give the same bytes; a block is never
left worse; the recipe stage runs through `toolkit run` and the artifact reloads to the
weights an in-process run computes."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from torch import nn

import compress
import models
from compress.block_io import capture_block0_inputs, run_block
from compress.errors import CompressError
from compress.prune import MagnitudeConfig
from compress.quant.awq import AWQConfig
from compress.quant.palettize import PalettizeConfig
from compress.quant.rtn import RTNConfig
from compress.recovery import RecoverConfig, recover_block
from toolkit.errors import UserError
from toolkit.recipe import CalibrationSpec, check_stage_order

STEPS = 40


def _calib(rows: int = 8, length: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 259, (rows, length), generator=generator)


def block_output_mse(student: nn.Module, teacher: nn.Module,
                     calib: torch.Tensor) -> list[float]:
    """Per block: mean squared difference between the student's block output (on the
    student's own activations) and the dense teacher's, from hooks on full forwards."""
    outputs: dict[tuple[str, int], torch.Tensor] = {}

    def grab(key):
        def hook(_module, _args, out):
            outputs[key] = (out[0] if isinstance(out, tuple) else out).detach()
        return hook

    handles = [block.register_forward_hook(grab((who, i)))
               for who, model in (("s", student), ("t", teacher))
               for i, block in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            student(input_ids=calib, use_cache=False)
            teacher(input_ids=calib, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    n = len(student.model.layers)
    return [float((outputs["s", i].double() - outputs["t", i].double()).pow(2).mean())
            for i in range(n)]


def _run(stage: compress.MethodConfig, recover: RecoverConfig | None = None) -> dict:
    """Compress a fresh fake Llama with `stage`, then recover; keep what the tests check."""
    model = models.create_model("fake-llama").module
    teacher = copy.deepcopy(model)
    calib = _calib()
    report = compress.apply(model, stage, calib)
    packed = dict(getattr(report, "quantized", {}) or {})
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    mse_before = block_output_mse(model, teacher, calib)
    recovered = compress.apply(model, recover or RecoverConfig(steps=STEPS), calib,
                               teacher=teacher, quantized=packed)
    return {"model": model, "teacher": teacher, "calib": calib, "packed": packed,
            "weights_before": weights_before, "mse_before": mse_before,
            "mse_after": block_output_mse(model, teacher, calib), "report": recovered}


@pytest.fixture(scope="module")
def rtn_run() -> dict:
    return _run(RTNConfig(bits=4, group_size=64))


@pytest.fixture(scope="module")
def magnitude_run() -> dict:
    return _run(MagnitudeConfig(sparsity=0.5))


def test_recover_after_rtn_lowers_every_block_mse_against_the_dense_model(rtn_run):
    before, after = rtn_run["mse_before"], rtn_run["mse_after"]
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)
    section = rtn_run["report"].manifest_section()
    assert section["kind"] == "recover" and section["blocks_recovered"] == len(before)
    # The stage's own loss after recovery is the independently measured one.
    for ours, theirs in zip(section["loss_after"], after, strict=True):
        assert math.isclose(ours, theirs, rel_tol=1e-4)
    # Block 0 sees the same inputs before and after, so its loss before is ours too.
    assert math.isclose(section["loss_before"][0], before[0], rel_tol=1e-4)


def test_recover_keeps_codes_and_the_block_holds_exactly_the_stored_form(rtn_run):
    model, old = rtn_run["model"], rtn_run["packed"]
    new = rtn_run["report"].quantized
    assert set(new) == set(old)
    modules = dict(model.named_modules())
    changed = 0
    for name, q in new.items():
        assert torch.equal(q.codes, old[name].codes), name
        assert torch.equal(q.zeros, old[name].zeros), name
        assert q.scales.dtype == torch.float16 and q.bits == old[name].bits
        changed += int(not torch.equal(q.scales, old[name].scales))
        # Independent dequantization: s * (c - z) per group of 64 inputs.
        scale = q.scales.float().repeat_interleave(64, dim=1)
        zero = q.zeros.float().repeat_interleave(64, dim=1)
        assert torch.equal(modules[name].weight, scale * (q.codes.float() - zero)), name
    assert changed == len(new)


def test_recover_after_magnitude_keeps_every_pruned_zero(magnitude_run):
    before, after = magnitude_run["mse_before"], magnitude_run["mse_after"]
    assert all(a < 0.5 * b for a, b in zip(after, before, strict=True)), (before, after)
    state, old = magnitude_run["model"].state_dict(), magnitude_run["weights_before"]
    moved = 0
    for name, weight in state.items():
        if name.endswith("_proj.weight"):
            assert torch.equal(weight == 0, old[name] == 0), name  # same zeros, no new ones
            moved += int(not torch.equal(weight, old[name]))
    assert moved == 14  # 7 linears in each of the 2 blocks
    assert magnitude_run["report"].quantized == {}
    # Trainable: the surviving half of every linear plus the norm weights (2 x 64 each).
    survivors = sum(int((w != 0).sum()) for n, w in state.items() if n.endswith("_proj.weight"))
    norms = sum(w.numel() for n, w in state.items() if "layers." in n and "norm" in n)
    assert magnitude_run["report"].manifest_section()["trainable"] == survivors + norms


def test_recover_after_palettization_keeps_indices():
    run = _run(PalettizeConfig(bits=4, group_rows=None), RecoverConfig(steps=20))
    assert all(a < b for a, b in zip(run["mse_after"], run["mse_before"], strict=True))
    modules = dict(run["model"].named_modules())
    for name, q in run["report"].quantized.items():
        old = run["packed"][name]
        assert torch.equal(q.indices, old.indices) and q.lut.dtype == torch.float16
        # One table for the whole tensor: W[r, j] = lut[0, index[r, j]].
        assert torch.equal(modules[name].weight, q.lut[0].float()[q.indices.long()]), name


def test_recover_after_awq_keeps_codes_and_input_scales():
    run = _run(AWQConfig(bits=4, group_size=64), RecoverConfig(steps=20))
    assert all(a < b for a, b in zip(run["mse_after"], run["mse_before"], strict=True))
    modules = dict(run["model"].named_modules())
    for name, q in run["report"].quantized.items():
        old = run["packed"][name]
        assert torch.equal(q.codes, old.codes) and torch.equal(q.input_scale, old.input_scale)
        scale = q.scales.float().repeat_interleave(64, dim=1)
        zero = q.zeros.float().repeat_interleave(64, dim=1)
        expected = scale * (q.codes.float() - zero) / q.input_scale.float()
        assert torch.equal(modules[name].weight, expected), name


def test_two_runs_with_one_seed_give_the_same_bytes():
    def packed_bytes(run):
        tensors = {}
        for name, q in sorted(run["report"].quantized.items()):
            tensors.update(q.to_tensors(name))
        tensors.update(run["model"].state_dict())
        return {k: v.contiguous().view(torch.uint8).numpy().tobytes()
                for k, v in tensors.items()}

    config = RecoverConfig(steps=5, batch_size=2, seed=7)
    first = _run(RTNConfig(bits=4, group_size=64), config)
    second = _run(RTNConfig(bits=4, group_size=64), config)
    assert packed_bytes(first) == packed_bytes(second)


def _block0(model: nn.Module, teacher: nn.Module, calib: torch.Tensor):
    inputs = capture_block0_inputs(model, model.model.layers[0], calib, 4, torch.device("cpu"))
    dense = capture_block0_inputs(teacher, teacher.model.layers[0], calib, 4,
                                  torch.device("cpu"))
    return inputs, run_block(teacher.model.layers[0], dense, torch.float32, True).hidden


def test_a_block_that_training_makes_worse_keeps_its_original_weights():
    model = models.create_model("fake-llama").module
    teacher = copy.deepcopy(model)
    calib = _calib(4, 16)
    packed = compress.apply(model, RTNConfig(bits=4, group_size=64), calib).quantized
    block = model.model.layers[0]
    local = {n[len("model.layers.0."):]: q for n, q in packed.items()
             if n.startswith("model.layers.0.")}
    inputs, targets = _block0(model, teacher, calib)
    state = {k: v.clone() for k, v in block.state_dict().items()}
    # Absurd rates throw the scales and norms far off: the trained loss is worse.
    returned, report = recover_block(block, inputs, targets, local,
                                     RecoverConfig(steps=3, lr=10.0, scale_lr=10.0))
    assert report["outcome"] == "kept original (no gain)"
    assert not report["loss_trained"] < report["loss_before"]
    assert report["loss_after"] == report["loss_before"]
    assert returned == local
    for key, value in block.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_an_uncompressed_block_is_already_exact_and_left_alone():
    model = models.create_model("fake-llama").module
    teacher = copy.deepcopy(model)
    inputs, targets = _block0(model, teacher, _calib(4, 16))
    state = {k: v.clone() for k, v in model.model.layers[0].state_dict().items()}
    _, report = recover_block(model.model.layers[0], inputs, targets, {}, RecoverConfig())
    assert report["outcome"] == "already exact" and report["loss_before"] == 0.0
    for key, value in model.model.layers[0].state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_packed_form_that_no_longer_matches_its_weight_is_refused():
    model = models.create_model("fake-llama").module
    teacher = copy.deepcopy(model)
    calib = _calib(4, 16)
    packed = compress.apply(model, RTNConfig(bits=4, group_size=64), calib).quantized
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(0.5)  # e.g. a later stage changed it
    with pytest.raises(CompressError, match="block 1: mlp.up_proj: .*right after"):
        compress.apply(model, RecoverConfig(steps=1), calib, teacher=teacher, quantized=packed)
    with pytest.raises(CompressError, match="needs the dense model as teacher"):
        compress.apply(model, RecoverConfig(steps=1), calib)


@pytest.mark.parametrize("knobs, needle", [
    ({"steps": 0}, "steps 0 must be an integer >= 1"),
    ({"batch_size": 1.5}, "batch_size 1.5"),
    ({"lr": 0}, "lr 0 must be a number > 0"),
    ({"scale_lr": -1e-3}, "scale_lr -0.001"),
    ({"train": "everything"}, "train 'everything' must be 'auto' or a list of"),
    ({"train": []}, "must be 'auto' or a list of"),
])
def test_bad_knobs_name_the_problem(knobs, needle):
    with pytest.raises(CompressError, match=needle):
        RecoverConfig(**knobs)


def test_config_round_trips_and_parts():
    config = compress.MethodConfig.from_dict({"method": "recover", "train": ["norms"],
                                              "steps": 7})
    assert isinstance(config, RecoverConfig) and config.parts() == {"norms"}
    assert compress.MethodConfig.from_dict(config.to_dict()) == config
    assert RecoverConfig().parts() == {"norms", "scales", "weights"}


def test_only_recover_may_follow_quantization_in_a_recipe():
    check_stage_order([RTNConfig(), RecoverConfig()])
    check_stage_order([MagnitudeConfig(), RTNConfig(), RecoverConfig(), RecoverConfig()])
    with pytest.raises(UserError, match="stage 3 \\(magnitude\\) comes after quantization"):
        check_stage_order([RTNConfig(), RecoverConfig(), MagnitudeConfig()])


def test_recover_stage_through_toolkit_run_reloads_to_the_recovered_weights(toolkit_cli,
                                                                            tmp_path):
    """RTN then recover on fake-llama through the CLI: the artifact holds the same codes as
    RTN alone, its weights are those an in-process run on the same calibration windows
    computes (bit for bit), and its blocks are closer to the dense model's."""
    from toolkit.workflows.llm import calibration

    spec = {"samples": 4, "seq_len": 32, "seed": 0}
    stages = [{"method": "rtn", "bits": 4, "group_size": 64},
              {"method": "recover", "steps": 10}]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "fake-llama", "calibration": spec,
                                      "stages": stages}), encoding="utf-8")
    out, report = tmp_path / "out", tmp_path / "out.json"
    result = toolkit_cli("run", recipe, "--out", out, "--json", report, "--no-eval", "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads(report.read_text(encoding="utf-8"))
    assert [s["kind"] for s in manifest["stages"]] == ["quantize", "recover"]
    assert manifest["stages"][1]["report"]["blocks_recovered"] == 2

    # The same job in process, on the windows the CLI calibrated on (same hash).
    fresh = models.create_model("fake-llama")
    data = calibration(fresh, CalibrationSpec(spec["samples"], spec["seq_len"], spec["seed"]))
    assert data.description["tokens_sha256"] == manifest["calibration"]["tokens_sha256"]
    teacher = copy.deepcopy(fresh.module)
    rtn = compress.apply(fresh.module, RTNConfig(bits=4, group_size=64), data.inputs)
    mse_rtn = block_output_mse(fresh.module, teacher, data.inputs)
    ours = compress.apply(fresh.module, RecoverConfig(steps=10), data.inputs,
                          teacher=teacher, quantized=rtn.quantized)

    saved = models.load_model(str(out))
    assert set(saved.quantized) == set(ours.quantized)
    for name, q in saved.quantized.items():
        assert torch.equal(q.codes, rtn.quantized[name].codes), name
        assert torch.equal(q.scales, ours.quantized[name].scales), name
    expected = fresh.module.state_dict()
    for name, value in saved.module.state_dict().items():
        assert torch.equal(value, expected[name]), name
    mse_saved = block_output_mse(saved.module, teacher, data.inputs)
    assert all(a < b for a, b in zip(mse_saved, mse_rtn, strict=True))
