"""The large-shape registry: parameter counts against published numbers and against
transformers' own modules built on the meta device, configs transformers and the
project's config checks accept."""

from __future__ import annotations

import json

import pytest
import torch

from models.errors import ModelError
from models.hf_config_check import check_config_values, check_supported_architecture
from models.large_shapes import (
    SMOLLM2_VOCAB,
    LargeShape,
    large_shapes,
    register_shape,
    shape_named,
)

REAL = ["afm-3b", "llama-3.2-3b", "llama-2-7b", "mistral-7b"]
TESTS = ["tiny-llama-test", "tiny-mistral-test"]


def meta_model(shape: LargeShape):
    """transformers' causal LM of the shape, on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**shape.hf_config())
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_registry_lists_real_shapes_first_and_marks_test_shapes():
    assert [s.name for s in large_shapes()] == REAL + TESTS
    assert [s.name for s in large_shapes(include_test=False)] == REAL
    assert all(shape_named(n).test for n in TESTS)
    assert not any(shape_named(n).test for n in REAL)


@pytest.mark.parametrize("name", REAL + TESTS)
def test_param_count_equals_transformers_module(name):
    """Independent count: the numel of every (deduplicated: tied) parameter transformers
    creates for the shape's config."""
    shape = shape_named(name)
    module = meta_model(shape)
    assert sum(p.numel() for p in module.parameters()) == shape.param_count()
    assert type(module).__name__ == shape.hf_config()["architectures"][0]
    tied = module.lm_head.weight is module.model.embed_tokens.weight
    assert tied == shape.tied


@pytest.mark.parametrize(("name", "published_billions"), [
    ("llama-3.2-3b", 3.21),  # Meta's Llama 3.2 model card
    ("llama-2-7b", 6.74),    # arXiv 2307.09288
    ("mistral-7b", 7.24),    # arXiv 2310.06825 / Mistral's model card
])
def test_param_count_matches_published(name, published_billions):
    assert round(shape_named(name).param_count() / 1e9, 2) == published_billions


def test_afm_matches_the_paper_table():
    """arXiv 2407.21075: 2.58B non-embedding and 0.15B embedding parameters."""
    afm = shape_named("afm-3b")
    assert (afm.hidden, afm.attention_head_dim, afm.heads, afm.kv_heads, afm.layers) == (
        3072, 128, 24, 8, 26)
    assert round(afm.non_embedding_param_count() / 1e9, 2) == 2.58
    assert round(afm.embedding_param_count() / 1e9, 2) == 0.15
    assert afm.tied and afm.vocab == SMOLLM2_VOCAB


def test_afm_ffn_width_is_the_only_multiple_of_32_that_gives_2_58b():
    afm = shape_named("afm-3b")
    fits = [f for f in range(32 * 200, 32 * 300, 32) if round(LargeShape(
        **{**afm.__dict__, "intermediate": f}).non_embedding_param_count() / 1e9, 2) == 2.58]
    assert fits == [afm.intermediate] == [8032]


def test_counts_by_hand_for_llama_2_7b():
    """6,738,415,616 = 2 * 32000 * 4096 + 32 * (4 * 4096^2 + 3 * 4096 * 11008 + 2 * 4096)
    + 4096, written out independently of the formula in the module."""
    assert shape_named("llama-2-7b").param_count() == (
        2 * 32000 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 4096)
    assert shape_named("llama-2-7b").param_count() == 6_738_415_616


@pytest.mark.parametrize("name", REAL + TESTS)
def test_config_loads_with_autoconfig_and_passes_project_checks(name, tmp_path):
    from transformers import AutoConfig

    shape = shape_named(name)
    raw = shape.hf_config()
    check_supported_architecture(raw, name)
    check_config_values(raw, name)
    (tmp_path / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == shape.architecture
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (
        shape.hidden, shape.layers, shape.intermediate)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (
        shape.heads, shape.kv_heads, shape.vocab)
    assert config.tie_word_embeddings == shape.tied
    assert config.max_position_embeddings == shape.max_position
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    assert config.rope_parameters["rope_theta"] == shape.rope_theta


def test_llama_3_2_keeps_its_llama3_rope_scaling(tmp_path):
    from transformers import AutoConfig

    (tmp_path / "config.json").write_text(
        json.dumps(shape_named("llama-3.2-3b").hf_config()), encoding="utf-8")
    rope = AutoConfig.from_pretrained(tmp_path).rope_parameters
    assert rope["rope_type"] == "llama3" and rope["factor"] == 32.0
    assert (rope["low_freq_factor"], rope["high_freq_factor"]) == (1.0, 4.0)
    assert rope["original_max_position_embeddings"] == 8192
    assert rope["rope_theta"] == 500000.0


def test_with_layers_changes_only_the_depth():
    afm = shape_named("afm-3b")
    four = afm.with_layers(4)
    assert four.layers == 4 and four.hidden == afm.hidden and afm.layers == 26
    assert four.param_count() == afm.embedding_param_count() + 4 * afm.block_param_count() \
        + afm.hidden
    assert afm.with_layers(None) is afm
    with pytest.raises(ModelError, match="layers"):
        afm.with_layers(0)


def test_unknown_shape_names_every_shape():
    with pytest.raises(ModelError) as info:
        shape_named("gpt-5")
    message = str(info.value)
    assert "\n" not in message and "gpt-5" in message
    assert all(name in message for name in REAL + TESTS)


def test_bad_shapes_are_refused():
    base = shape_named("tiny-llama-test").__dict__
    with pytest.raises(ModelError, match="multiple"):
        LargeShape(**{**base, "heads": 4, "kv_heads": 3})
    with pytest.raises(ModelError, match="architecture"):
        LargeShape(**{**base, "architecture": "gpt2"})
    with pytest.raises(ModelError, match="positive"):
        LargeShape(**{**base, "hidden": 0})
    with pytest.raises(ValueError, match="twice"):
        register_shape(shape_named("afm-3b"))


def test_sizes_in_gb_follow_the_count():
    mistral = shape_named("mistral-7b")
    assert mistral.size_gb(2) == pytest.approx(7_241_732_096 * 2 / 1e9)
    row = mistral.table_row()
    assert row[0] == "mistral-7b" and row[8] == "7.242B" and row[10] == "14.48"
    assert shape_named("tiny-llama-test").table_row()[0] == "tiny-llama-test (test)"
