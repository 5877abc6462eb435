"""Mobile V-MoE (models.vmoe): the gathered experts against hand-written F.linear math,
batch against one image at a time, top-2 gates, expert dropping, parameter and FLOP
counts, the fake's registration and its ONNX export."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import models.vmoe  # noqa: F401  (registers fake-vmoe)
from export.vision import Preprocess, export_vision, verify_vision
from models.errors import ModelError
from models.registry import create_model
from models.vmoe import (
    FAKE_CONFIG,
    ExpertMlps,
    VisionMoE,
    count_params,
    dense_baseline,
    drop_experts,
    flops_per_image,
)


@pytest.fixture(scope="module")
def fake():
    return create_model("fake-vmoe")


def normalised(loaded, count: int, seed: int) -> torch.Tensor:
    spec = loaded.vision
    mean, std = torch.tensor(spec.mean).view(1, -1, 1, 1), torch.tensor(spec.std).view(1, -1, 1, 1)
    return (spec.images(count, seed) / 255 - mean) / std


def fresh(fake, **changes) -> VisionMoE:
    """A copy of the fake's weights under a changed config (same parameter shapes)."""
    model = VisionMoE(dataclasses.replace(FAKE_CONFIG, **changes))
    model.load_state_dict(fake.module.state_dict())
    return model.eval()


def expert_by_hand(mlp: ExpertMlps, e: int, x: torch.Tensor) -> torch.Tensor:
    hidden = F.gelu(F.linear(x, mlp.fc1_weight[e], mlp.fc1_bias[e]))
    return F.linear(hidden, mlp.fc2_weight[e], mlp.fc2_bias[e])


def run_recording(model: VisionMoE, x: torch.Tensor):
    """Logits, the router logits recomputed by hand from the last dense block's tokens,
    and (input, output) of every expert set."""
    seen, dense = [], {}
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
             for m in model.modules() if isinstance(m, ExpertMlps)]
    hooks.append(model.blocks[model.first_moe - 1].register_forward_hook(
        lambda m, args, out: dense.update(tokens=out)))
    with torch.no_grad():
        logits = model(x)
    for hook in hooks:
        hook.remove()
    norm = model.router_norm
    pooled = F.layer_norm(dense["tokens"].mean(dim=1), norm.normalized_shape, norm.weight,
                          norm.bias, norm.eps)
    router = F.linear(pooled, model.router.weight, model.router.bias)
    return logits, router, seen


def test_every_forced_expert_matches_its_linear_math(fake):
    model = copy.deepcopy(fake.module)
    x = normalised(fake, 3, seed=1)
    for e in range(FAKE_CONFIG.num_experts):
        with torch.no_grad():  # the router ignores the image and always picks e
            model.router.weight.zero_()
            model.router.bias.fill_(-10.0)
            model.router.bias[e] = 10.0
        _, _, seen = run_recording(model, x)
        assert model.expert_choice(x).tolist() == [[e]] * 3
        assert len(seen) == FAKE_CONFIG.moe_layers
        for mlp, inputs, out in seen:
            torch.testing.assert_close(out, expert_by_hand(mlp, e, inputs))
            others = [expert_by_hand(mlp, o, inputs) for o in range(4) if o != e]
            assert all((other - out).abs().max() > 1e-2 for other in others)  # they differ


def test_batch_equals_one_image_at_a_time(fake):
    model = fake.module
    x = normalised(fake, 16, seed=2)
    with torch.no_grad():
        batch = model(x)
        batch_router = model.last_router_logits
        single = torch.cat([model(image[None]) for image in x])
        choices = model.expert_choice(x)[:, 0]
    assert len(set(choices.tolist())) >= 3  # several experts are exercised in one batch
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)
    _, router, _ = run_recording(model, x)
    torch.testing.assert_close(batch_router, router)
    assert torch.equal(choices, router.argmax(dim=-1))


def test_top2_is_the_renormalised_sum_of_two_experts(fake):
    model = fresh(fake, top_k=2)
    x = normalised(fake, 6, seed=3)
    _, router, seen = run_recording(model, x)
    top_p, top_e = router.softmax(dim=-1).topk(2, dim=-1)
    gates = top_p / top_p.sum(dim=-1, keepdim=True)
    assert bool(((gates > 0.05) & (gates < 0.95)).all())  # both experts really contribute
    assert torch.equal(model.expert_choice(x), top_e)
    for mlp, inputs, out in seen:
        for i in range(len(x)):
            want = sum(gates[i, s] * expert_by_hand(mlp, int(top_e[i, s]), inputs[i])
                       for s in range(2))
            torch.testing.assert_close(out[i], want)


def test_top1_without_renormalising_scales_by_the_router_probability(fake):
    model = fresh(fake, renormalize=False)
    x = normalised(fake, 4, seed=4)
    _, router, seen = run_recording(model, x)
    p, e = router.softmax(dim=-1).max(dim=-1)
    assert bool((p < 0.95).all())
    for mlp, inputs, out in seen:
        for i in range(len(x)):
            torch.testing.assert_close(out[i], p[i] * expert_by_hand(mlp, int(e[i]), inputs[i]))


def test_drop_experts_keeps_the_chosen_rows_and_never_routes_to_dropped_ones(fake):
    model = copy.deepcopy(fake.module)
    x = torch.cat([normalised(fake, 64, seed=5), torch.randn(192, 3, 16, 16)])
    with torch.no_grad():
        before = model(x)
    old_router = model.last_router_logits
    old_choice = old_router.argmax(dim=-1)
    old_mlps = [copy.deepcopy(m) for m in model.modules() if isinstance(m, ExpertMlps)]
    old_weight, old_bias = model.router.weight.clone(), model.router.bias.clone()
    keep = [3, 0, 2]  # unsorted: the new order must follow `keep`
    assert drop_experts(model, keep) is model

    assert model.router.out_features == 3 and model.config.num_experts == 3
    assert torch.equal(model.router.weight, old_weight[keep])
    assert torch.equal(model.router.bias, old_bias[keep])
    mlps = [m for m in model.modules() if isinstance(m, ExpertMlps)]
    assert len(mlps) == len(old_mlps) == 2
    for new, old in zip(mlps, old_mlps, strict=True):
        for name in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"):
            assert torch.equal(getattr(new, name), getattr(old, name)[keep])

    with torch.no_grad():
        after = model(x)
        new_choice = torch.tensor(keep)[model.expert_choice(x)[:, 0]]
    kept = torch.isin(old_choice, torch.tensor(keep))
    assert 0 < int(kept.sum()) < len(x)  # both cases occur
    torch.testing.assert_close(after[kept], before[kept])
    assert not torch.allclose(after[~kept], before[~kept])
    # Each image goes to its best kept expert under the old router; 1 is never chosen.
    assert torch.equal(new_choice, torch.tensor(keep)[old_router[:, keep].argmax(dim=-1)])
    assert 1 not in new_choice.tolist()


@pytest.mark.parametrize("keep", [[], [0, 0], [0, 4], [-1]])
def test_drop_experts_rejects_bad_lists(fake, keep):
    with pytest.raises(ModelError, match="keep"):
        drop_experts(copy.deepcopy(fake.module), keep)


def test_drop_experts_keeps_at_least_top_k(fake):
    with pytest.raises(ModelError, match="top_k"):
        drop_experts(fresh(fake, top_k=2), [1])


def test_parameter_counts_by_hand_and_dense_baseline_matches_activated(fake):
    d, h, n, e, k, depth, moe = 32, 64, 16, 4, 1, 3, 2  # FAKE_CONFIG
    norm, mlp = 2 * d, d * h + h + h * d + d
    attention = 3 * d * d + 3 * d + d * d + d
    router = norm + d * e + e
    stem_and_head = (3 * 4 * 4 * d + d) + n * d + norm + (d * 10 + 10)
    total = stem_and_head + depth * (2 * norm + attention) + (depth - moe) * mlp \
        + moe * e * mlp + router
    assert count_params(fake.module) == (total, total - moe * (e - k) * mlp) == (53454, 28302)
    dense = dense_baseline(FAKE_CONFIG)
    assert count_params(dense) == (28302 - router,) * 2
    assert all(sum(p.numel() for p in b.mlp.parameters()) == mlp for b in dense.blocks)
    assert count_params(fresh(fake, top_k=2))[1] == 28302 + moe * mlp


@pytest.mark.parametrize("top_k", [1, 2])
def test_flops_per_image_formula_and_dense_equality(fake, top_k):
    def measured(model):
        with FlopCounterMode(display=False) as counter, torch.no_grad(), \
                sdpa_kernel(SDPBackend.MATH):  # the math kernel's bmms are counted
            model(torch.randn(1, 3, 16, 16))
        return counter.get_total_flops(), counter.get_flop_counts()

    moe_model, dense = fresh(fake, top_k=top_k), dense_baseline(FAKE_CONFIG)
    (moe_flops, moe_parts), (dense_flops, dense_parts) = measured(moe_model), measured(dense)
    assert moe_flops == flops_per_image(moe_model.config)
    assert dense_flops == flops_per_image(dense.config)
    # (k - 1) extra MLPs in each of the 2 MoE blocks (4*N*D*H each), plus the router.
    assert moe_flops - dense_flops == (top_k - 1) * 2 * 4 * 16 * 32 * 64 + 2 * 32 * 4
    for i in (1, 2):  # an MoE block's experts cost k times the dense MLP of that block
        mlp = f"VisionMoE.blocks.{i}.mlp"
        assert sum(moe_parts[mlp].values()) == top_k * sum(dense_parts[mlp].values())


def test_fake_registers_and_exports_to_onnx_with_static_shapes(fake, tmp_path):
    assert fake.name == "fake-vmoe" and fake.source == "fake-vmoe"
    assert not fake.module.training and fake.vision.shape == (1, 3, 16, 16)
    spec = fake.vision
    raw = spec.images(24, 7)
    assert raw.shape == (24, 3, 16, 16) and 0 <= raw.min() and raw.max() <= 255
    preprocess = Preprocess(spec.mean, spec.std)
    result = export_vision(fake.module, spec.shape, "onnx", tmp_path / "vmoe.onnx",
                           preprocess=preprocess, example=raw[:1])
    (check,) = verify_vision(result)
    assert check.relative_error < 1e-4

    graph = onnx.load(str(result.path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"TopK", "Gather"} <= ops and not ops & {"NonZero", "ScatterND", "Loop", "If"}
    for value in (*graph.input, *graph.output):
        assert all(dim.HasField("dim_value") for dim in value.type.tensor_type.shape.dim)
    # The route is computed in the file, not frozen from the traced image: images the
    # model sends to other experts agree too.
    choices = fake.module.expert_choice(normalised(fake, 24, 7))[:, 0]
    others = [i for i in range(24) if choices[i] != choices[0]][:3]
    assert others
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for i in others:
        (got,) = session.run(None, {session.get_inputs()[0].name: raw[i:i + 1].numpy()})
        with torch.no_grad():
            want = result.wrapped(raw[i:i + 1]).numpy()
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
