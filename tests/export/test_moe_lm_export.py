"""MoE language models through the LLM exporter (export/llm/moe_mlp.py): the re-authored
decoder computes what the PyTorch MoE model computes step by step through the cache
(the upcycled fake, an expert-dropped one, transformers' own Mixtral), the gates are the
renormalised top-k router probabilities and zero elsewhere, and the ONNX file gives
PyTorch's greedy tokens (the exporter's own verifier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import apply
from compress.experts.drop import DropExpertsConfig
from compress.quant.rtn import RTNConfig
from export.llm.export_decoder import ExportDecoder
from export.llm.moe_mlp import MoeMLP
from models import create_model, load_model
from models.mixtral_io import TOOLKIT_LAYOUT, write_moe_lm_weights
from models.moe_groups import moe_groups
from models.moe_lm import swiglu_expert
from models.upcycle import moe_section
from tests.export.decoder_steps import assert_decoder_matches_step_by_step

CONTEXT = 48
PROMPT = [40, 41, 72, 101, 108, 108, 111]
GREEDY_PROMPT = [1, 40, 41, 72, 101, 108, 108, 111]


def expert_dropped():
    """fake-moe-llm after `drop-experts` (weight-only criterion: no calibration needed)."""
    loaded = create_model("fake-moe-llm")
    apply(loaded.module, DropExpertsConfig(criterion="router-norm", drop=0.25), None)
    assert [g.num_experts for g in moe_groups(loaded.module)] == [3, 3]
    return loaded.module


def tiny_mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=259, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=3, num_experts_per_tok=2,
                           max_position_embeddings=256)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = MixtralForCausalLM(config).eval()
        with torch.no_grad():  # a decided routing, not the near-uniform initial one
            for layer in model.model.layers:
                layer.mlp.gate.weight.normal_(0, 0.5)
    return model


MODELS = {"fake-moe-llm": lambda: create_model("fake-moe-llm").module,
          "dropped": expert_dropped, "mixtral": tiny_mixtral}


@pytest.mark.parametrize("name", list(MODELS))
def test_export_decoder_equals_the_moe_model_step_by_step(name):
    assert_decoder_matches_step_by_step(MODELS[name]())


def test_dense_experts_with_zero_gates_equal_the_chosen_experts_sum():
    block = moe_groups(create_model("fake-moe-llm").module)[0]
    mlp = MoeMLP.from_block(block, "silu", "layer 0")
    x = torch.randn(9, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gates, out = mlp.gates(x), mlp(x)
        probs = torch.softmax(x @ block.router.weight.t(), dim=-1)
        for t in range(x.shape[0]):  # an independent per-token evaluation
            top = probs[t].argsort(descending=True)[:2]
            assert set(gates[t].nonzero().flatten().tolist()) == set(top.tolist())
            weights = probs[t, top] / probs[t, top].sum()
            expected = sum(w * swiglu_expert(x[t:t + 1], block.gate_proj[e], block.up_proj[e],
                                             block.down_proj[e])
                           for w, e in zip(weights, top, strict=True))
            torch.testing.assert_close(out[t:t + 1], expected, rtol=1e-5, atol=1e-6)


def test_restricted_routing_and_other_moe_kinds_are_refused():
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    from export.errors import ExportError

    model = create_model("fake-moe-llm").module
    moe_groups(model)[1].allowed = [0, 1]
    with pytest.raises(ExportError, match=r"routing restricted to experts \[0, 1\]"):
        ExportDecoder.from_hf(model, CONTEXT)
    # Qwen2-MoE adds a shared expert and skips the renormalisation: not Mixtral's routing.
    qwen = AutoModelForCausalLM.from_config(Qwen2MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        shared_expert_intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2))
    with pytest.raises(ExportError, match="Qwen2MoeSparseMoeBlock experts .* not supported"):
        ExportDecoder.from_hf(qwen, CONTEXT)


# One ONNX export takes 15-30 s on 2 busy cores: by default only the quantized
# expert-dropped model below goes to ONNX (its experts take the same float path as these).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["fake-moe-llm", "dropped"])
def test_onnx_gives_pytorchs_greedy_tokens(name, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from export.onnx.llm import export_llm_onnx
    from export.onnx.verify_llm import verify_llm_onnx

    model = MODELS[name]()
    result = export_llm_onnx(model, tmp_path / "moe.onnx", max_context=CONTEXT)
    check = verify_llm_onnx(result.path, model, PROMPT, 10, result.decoder.shape.cache_shape(),
                            CONTEXT)
    assert check.tokens_match, (check.pytorch_tokens, check.runtime_tokens)
    assert check.logits.max_abs_error < 1e-4


def test_quantized_moe_lm_round_trips_packed_and_onnx_carries_it(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from export.onnx.llm import export_llm_onnx
    from export.onnx.verify_llm import verify_llm_onnx

    model = expert_dropped()
    quantized = apply(model, RTNConfig(bits=4, group_size=32), None).quantized
    assert "model.layers.1.mlp.router" in quantized  # the routers are linears too
    note = write_moe_lm_weights(model, tmp_path, quantized)
    assert note["layout"] == TOOLKIT_LAYOUT and "packed" in note["layout_reason"]
    assert not (tmp_path / "model.safetensors").exists()  # nothing transformers half-loads
    create_model("fake-llama").tokenizer.save_pretrained(tmp_path)
    (tmp_path / "toolkit.json").write_text(json.dumps(
        {"family": "moe-llm", "moe": {**moe_section(model), **note}}))
    loaded = load_model(str(tmp_path))
    assert sorted(loaded.quantized) == sorted(quantized)
    for name, packed in quantized.items():
        assert torch.equal(loaded.quantized[name].codes, packed.codes)
    result = export_llm_onnx(loaded.module, tmp_path / "moe.onnx", max_context=CONTEXT,
                             quantized=loaded.quantized)
    assert len(result.carried) == len(quantized) and not result.dropped
    check = verify_llm_onnx(result.path, model, GREEDY_PROMPT, 10,
                            result.decoder.shape.cache_shape(), CONTEXT)
    assert check.tokens_match and check.logits.max_abs_error < 1e-4


@pytest.mark.slow  # a LiteRT conversion takes minutes on 2 busy cores
def test_litert_gives_pytorchs_greedy_tokens(tmp_path: Path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from export.litert.llm import export_llm_litert
    from export.litert.verify_llm import verify_llm_litert

    model = expert_dropped()
    result = export_llm_litert(model, tmp_path / "moe.tflite", max_context=CONTEXT,
                               prefill_tokens=8)
    check = verify_llm_litert(result.path, model, GREEDY_PROMPT, 10, CONTEXT)
    assert check.tokens_match, (check.pytorch_tokens, check.runtime_tokens)
    assert check.logits.max_abs_error < 1e-4
