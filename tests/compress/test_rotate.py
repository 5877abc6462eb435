"""The `rotate` stage (compress/rotate/): Hadamard constructions, exact function
preservation on every Llama-shaped fake (tied and untied heads, GQA, q/k/v biases,
Gemma's 1 + w norms), what it does to weight incoherence and to 4-bit RTN on a model with
a planted outlier channel, and its one-line refusals."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

import compress
from compress.errors import CompressError
from compress.quant.rtn import RTNConfig
from compress.requirements import unmet_need
from compress.rotate import RotateConfig, hadamard, orthogonal, rotate_model
from compress.rotate.hadamard import paley_one, paley_two
from compress.rotate.rotate import incoherence, norm_offset
from models import create_model

LLM_FAKES = ("fake-llama", "fake-mistral", "fake-qwen2", "fake-gemma")
TOKENS = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(0))


# --- Hadamard matrices -------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 64, 576, 1536, 3072])
def test_hadamard_is_orthogonal_with_unit_entries(n):
    h = hadamard(n)
    assert h.shape == (n, n) and h.dtype == torch.float64
    assert bool(((h == 1) | (h == -1)).all())
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))  # integers: exact


def test_hadamard_8192_rows_are_orthogonal():
    """The full product is 5.5e11 flops (minutes on one core): 64 random rows against all
    rows check the same identity on a sample, and the entries everywhere."""
    n = 8192
    h = hadamard(n)
    assert bool(((h == 1) | (h == -1)).all())
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:64]
    assert torch.equal(h[rows] @ h.T, n * torch.eye(n, dtype=torch.float64)[rows])


def test_paley_constructions_directly():
    """Paley I (q = 11, 19) and Paley II (q = 5, 13, 17) on their own, not via a product."""
    for q in (11, 19):
        h = paley_one(q)
        assert torch.equal(h @ h.T, (q + 1) * torch.eye(q + 1, dtype=torch.float64))
    for q in (5, 13, 17):
        h = paley_two(q)
        n = 2 * (q + 1)
        assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 6, 7, 188, 0, -4])
def test_unknown_sizes_are_refused_in_one_line(n):
    with pytest.raises(CompressError) as info:
        hadamard(n)
    message = str(info.value)
    assert "\n" not in message and str(n) in message and "kind: random" in message


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_orthogonal_is_orthogonal_and_seeded(kind):
    first = orthogonal(576, kind, torch.Generator().manual_seed(3))
    again = orthogonal(576, kind, torch.Generator().manual_seed(3))
    other = orthogonal(576, kind, torch.Generator().manual_seed(4))
    eye = torch.eye(576, dtype=torch.float64)
    assert torch.allclose(first @ first.T, eye, atol=1e-12)
    assert torch.equal(first, again) and not torch.equal(first, other)


# --- function preservation ---------------------------------------------------------------

def _float64_norms(model: nn.Module) -> None:
    """transformers' RMSNorms compute in float32 even in a float64 model; give each one a
    float64 forward with the same formula (w or 1 + w, found by the stage's own probe), so
    the comparison below measures the rotation's algebra, not float32 rounding."""
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            offset = norm_offset(module)
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))

            def forward(self, x, offset=offset, eps=eps):
                return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (
                    offset + self.weight)

            module.forward = types.MethodType(forward, module)


def _logits(model: nn.Module, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("name", LLM_FAKES)
@pytest.mark.parametrize("head_rotation", [True, False])
@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_float64_logits_are_unchanged(name, head_rotation, kind):
    model = create_model(name).module.double()
    _float64_norms(model)
    reference = _logits(model)
    report = compress.apply(model, RotateConfig(kind=kind, head_rotation=head_rotation), TOKENS)
    error = (_logits(model) - reference).abs().max() / reference.abs().max()
    assert error < 1e-10, error
    assert report.manifest_section()["head_dim"] == (16 if head_rotation else None)


@pytest.mark.parametrize("name", LLM_FAKES)
def test_float32_logits_within_rounding(name):
    """float32 weights are rounded once after the float64 rotation (relative 6e-8 each) and
    the forward runs in float32; over two blocks the logits move by ~5e-7 of their scale
    here. 2e-5 of the scale leaves 40x margin yet is far below any rotation mistake (a
    wrong sign or transpose changes logits by their own size)."""
    model = create_model(name).module
    reference = _logits(model)
    compress.apply(model, RotateConfig(), TOKENS)
    assert (_logits(model) - reference).abs().max() < 2e-5 * reference.abs().max()


def _llama(hidden: int, heads: int, kv_heads: int, head_dim: int, **extra) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=259, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, head_dim=head_dim,
                         max_position_embeddings=64, **extra)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():  # non-trivial norms and biases, so folding them is exercised
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                param.copy_(torch.rand_like(param) + 0.5)
    return model


@pytest.mark.parametrize("shape", [
    dict(hidden=48, heads=4, kv_heads=1, head_dim=12),   # Paley head size, 4 queries per kv
    dict(hidden=96, heads=6, kv_heads=3, head_dim=12, attention_bias=True, mlp_bias=True),
    dict(hidden=40, heads=2, kv_heads=2, head_dim=20, tie_word_embeddings=True),
])
def test_gqa_bias_and_non_power_of_two_shapes(shape):
    """GQA (one value head per several query heads), biases on every linear (o_proj and
    down_proj biases are rotated with their weights), Hadamard sizes 12, 20, 40, 48, 96."""
    model = _llama(**shape)
    _float64_norms(model)
    reference = _logits(model)
    report = rotate_model(model, RotateConfig())
    error = (_logits(model) - reference).abs().max() / reference.abs().max()
    assert error < 1e-10, error
    assert report["hidden_size"] == shape["hidden"] and report["head_dim"] == shape["head_dim"]


def test_tied_head_is_untied_and_recorded():
    model = create_model("fake-llama").module
    assert model.lm_head.weight is model.model.embed_tokens.weight
    report = compress.apply(model, RotateConfig(), TOKENS).manifest_section()
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert model.config.tie_word_embeddings is False
    assert report["untied_head"] is True and report["head_bytes_added"] == 259 * 64 * 4
    untied = create_model("fake-mistral").module
    report = compress.apply(untied, RotateConfig(), TOKENS).manifest_section()
    assert report["untied_head"] is False and report["head_bytes_added"] == 0


def test_norms_are_folded_to_unit_scales():
    llama, gemma = create_model("fake-llama").module, create_model("fake-gemma").module
    for model, unit in ((llama, 1.0), (gemma, 0.0)):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.uniform_(0.5, 1.5)
        rotate_model(model, RotateConfig())
        norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
        assert len(norms) == 5 and all(bool((p == unit).all()) for p in norms)


def test_same_seed_same_weights_other_seed_differs():
    def rotated(seed):
        model = create_model("fake-llama").module
        rotate_model(model, RotateConfig(seed=seed))
        return model.state_dict()

    first, again, other = rotated(0), rotated(0), rotated(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.layers.0.self_attn.q_proj.weight"],
                           other["model.layers.0.self_attn.q_proj.weight"])


# --- what it does to quantization ----------------------------------------------------------

READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
           "mlp.up_proj")


def _planted_outlier() -> nn.Module:
    """fake-llama with input channel 5 of every residual reader 30x larger: the kind of
    outlier channel rotations are for."""
    model = create_model("fake-llama").module.double()
    with torch.no_grad():
        for layer in model.model.layers:
            for path in READERS:
                layer.get_submodule(path).weight[:, 5] *= 30
    return model


def test_rotation_lowers_incoherence_of_a_planted_outlier():
    model = _planted_outlier()
    q_proj = model.model.layers[0].self_attn.q_proj
    before = incoherence(q_proj.weight)
    report = compress.apply(model, RotateConfig(), TOKENS).manifest_section()["incoherence"]
    assert incoherence(q_proj.weight) < before / 3
    assert report["after"]["mean"] < report["before"]["mean"] / 3
    assert report["after"]["max"] < report["before"]["max"] / 3


def test_rotate_then_rtn4_beats_rtn4_on_a_planted_outlier():
    """The error is measured here on the logits (relative Frobenius norm against the float
    model), independently of any number the stages report."""
    tokens = torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(0))
    reference_model = _planted_outlier()
    reference = _logits(reference_model, tokens)

    def error(stages) -> float:
        model = copy.deepcopy(reference_model)
        for stage in stages:
            compress.apply(model, stage, tokens, forward_dtype=torch.float64)
        return float((_logits(model, tokens) - reference).norm() / reference.norm())

    rtn = RTNConfig(bits=4, group_size=64)
    plain, rotated = error([rtn]), error([RotateConfig(), rtn])
    assert rotated < 0.75 * plain, (rotated, plain)


# --- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("knobs, word", [
    ({"kind": "fourier"}, "fourier"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"head_rotation": "yes"}, "head_rotation"),
])
def test_bad_knobs_are_refused_in_one_line(knobs, word):
    with pytest.raises(CompressError) as info:
        RotateConfig(**knobs)
    assert word in str(info.value) and "\n" not in str(info.value)


def test_unknown_hadamard_size_refused_before_any_change_then_random_works():
    model = _llama(hidden=188, heads=4, kv_heads=2, head_dim=16)
    _float64_norms(model)
    state = copy.deepcopy(model.state_dict())
    reference = _logits(model)
    with pytest.raises(CompressError, match=r"size 188 .*use kind: random"):
        rotate_model(model, RotateConfig())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    rotate_model(model, RotateConfig(kind="random"))
    assert (_logits(model) - reference).abs().max() < 1e-10 * reference.abs().max()


def _routing(model: nn.Module) -> list[torch.Tensor]:
    """The experts each MoE layer chose for TOKENS (models.moe_lm's routing records)."""
    layers = [m for m in model.modules() if getattr(m, "routing_group", False)]
    for layer in layers:
        layer.recording = []
    _logits(model)
    chosen = [layer.recording[0].chosen for layer in layers]
    for layer in layers:
        layer.recording = None
    return chosen


def test_mixture_of_experts_rotates_router_and_every_expert_exactly():
    """The router and each expert's gate/up read the rotated stream, each expert's down
    writes it: the routing is unchanged and the logits too, up to the float32 router
    softmax and gates the MoE block computes in (relative 1e-7 here; a missed expert or
    a wrong transpose moves them by their own size)."""
    model = create_model("fake-moe-llm").module.double()
    _float64_norms(model)
    reference, routing = _logits(model), _routing(model)
    experts = [m for m in model.modules() if getattr(m, "routing_group", False)]
    before = [m.down_proj.detach().clone() for m in experts]
    report = compress.apply(model, RotateConfig(), TOKENS)
    assert all(torch.equal(a, b) for a, b in zip(_routing(model), routing, strict=True))
    error = (_logits(model) - reference).abs().max() / reference.abs().max()
    assert error < 1e-6, error
    assert all(not torch.allclose(a, m.down_proj) for a, m in zip(before, experts,
                                                                  strict=True))
    # q, k, v, o, router, gate, up, down per block + the head
    assert report.manifest_section()["linears"] == 8 * len(experts) + 1


def test_an_unknown_block_parameter_is_still_refused_in_one_line():
    model = create_model("fake-llama").module
    block = model.model.layers[0]
    block.self_attn.q_norm = nn.Parameter(torch.ones(16))  # e.g. Qwen3's q/k norms
    reason = unmet_need(RotateConfig, model)
    assert reason is not None and "\n" not in reason and "outside" in reason
    with pytest.raises(CompressError, match="rotate: "):
        rotate_model(model, RotateConfig())


def test_layer_norm_is_not_an_rms_norm():
    """A LayerNorm subtracts the mean, which does not commute with a rotation."""
    with pytest.raises(CompressError, match="not an RMSNorm"):
        norm_offset(nn.LayerNorm(16, bias=False))
    with pytest.raises(CompressError, match="not an RMSNorm"):
        norm_offset(nn.LayerNorm(16))


def test_streaming_engine_takes_rotate_as_a_change_of_basis():
    """Streamed, rotate is a data-free stage with engine hooks, not a per-linear step
    (the equality with the in-memory engine: tests/toolkit/test_rotate_streaming.py)."""
    from compress.block_stages import stage_for
    from compress.rotate.streaming_stage import RotateStage

    stage = stage_for(RotateConfig(), n_blocks=2, calib_tokens=64,
                      forward_dtype=torch.float32, seconds={})
    assert isinstance(stage, RotateStage) and stage.changes_stream
    assert stage.needs == frozenset() and stage.calib_tokens == 0
    assert not stage.keep("model.layers.0.self_attn.q_proj")
