"""Sparse upcycling (models/upcycle.py), the fake-moe-llm model and the moe-llm artifact
loader (models/moe_lm_artifact.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from models import create_model, load_model
from models.errors import ModelError
from models.moe_groups import moe_groups
from models.moe_lm import SparseMoeBlock
from models.upcycle import install_moe_layers, moe_layers, moe_section, upcycle_llama


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 259, (3, 17), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["fake-llama", "fake-gemma"])
def test_upcycled_model_computes_what_the_dense_one_did(name, ids):
    dense = create_model(name).module
    dense_mlps = [copy.deepcopy(layer.mlp) for layer in dense.model.layers]
    expected = logits(dense, ids)
    upcycle_llama(dense, num_experts=4, top_k=2, seed=3)
    layers = moe_layers(dense)
    assert len(layers) == len(dense_mlps) == dense.config.num_hidden_layers
    for layer, mlp in zip(layers, dense_mlps, strict=True):
        assert layer.num_experts == 4 and layer.top_k == 2
        for part in ("gate_proj", "up_proj", "down_proj"):
            for e in range(4):  # every expert is an exact copy of the dense MLP
                assert torch.equal(getattr(layer, part)[e], getattr(mlp, part).weight)
        assert type(layer.act_fn) is type(mlp.act_fn)  # Gemma keeps its GELU
    # Identical experts and gates summing to 1: the dense output, up to float rounding.
    torch.testing.assert_close(logits(dense, ids), expected, rtol=1e-5, atol=1e-5)


def test_upcycled_layers_are_the_routing_groups_also_of_a_deep_copy(ids):
    model = create_model("fake-llama").module
    upcycle_llama(model, 4, 2)
    groups = moe_groups(model)
    assert [g.name for g in groups] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert all(isinstance(g, SparseMoeBlock) for g in groups)
    twin = copy.deepcopy(model)
    twin_groups = moe_groups(twin)
    assert all(a is not b for a, b in zip(groups, twin_groups, strict=True))
    twin_groups[0].keep_only([0, 1])
    assert groups[0].num_experts == 4  # the copy's groups are the copy's own
    torch.testing.assert_close(logits(twin, ids), logits(model, ids), rtol=1e-5, atol=1e-5)


def test_router_is_seeded_small_and_fresh():
    a, b, c = (create_model("fake-llama").module for _ in range(3))
    upcycle_llama(a, 4, 2, seed=0, router_init_std=0.02)
    upcycle_llama(b, 4, 2, seed=0, router_init_std=0.02)
    upcycle_llama(c, 4, 2, seed=1, router_init_std=0.02)
    ra, rb, rc = (moe_layers(m)[0].router.weight.detach() for m in (a, b, c))
    assert torch.equal(ra, rb) and not torch.equal(ra, rc)
    assert moe_layers(a)[0].router.bias is None
    assert 0.01 < float(ra.std()) < 0.03
    assert not torch.equal(moe_layers(a)[0].router.weight, moe_layers(a)[1].router.weight)


def test_upcycle_refuses_bad_arguments_and_moe_models():
    model = create_model("fake-llama").module
    with pytest.raises(ModelError, match="top_k"):
        upcycle_llama(model, 2, 3)
    upcycle_llama(model, 2, 1)
    with pytest.raises(ModelError, match="already"):
        upcycle_llama(model, 2, 1)


def test_fake_moe_llm_has_distinct_experts_and_routes_over_them(ids):
    loaded = create_model("fake-moe-llm")
    groups = moe_groups(loaded.module)
    assert len(groups) == 2 and all(g.num_experts == 4 and g.top_k == 2 for g in groups)
    for group in groups:
        weights = group.gate_proj
        for e in range(1, 4):
            assert not torch.allclose(weights[0], weights[e])
        group.recording = []
    logits(loaded.module, ids)
    for group in groups:
        chosen = group.recording[0].chosen
        group.recording = None
        assert chosen.shape == (ids.numel(), 2)
        assert len(chosen.unique()) > 1
    assert moe_section(loaded.module) == {"num_experts": 4, "top_k": 2, "layers": [4, 4]}


def save_moe_directory(loaded, path):
    """An artifact as the toolkit writes it (save_pretrained + tokenizer + toolkit.json),
    written here without toolkit/ so that models/ is tested on its own floor."""
    loaded.module.save_pretrained(path, safe_serialization=True)
    loaded.tokenizer.save_pretrained(path)
    manifest = {"family": "moe-llm", "moe": moe_section(loaded.module)}
    (path / "toolkit.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_artifact_round_trip_with_experts_dropped_in_one_layer(tmp_path, ids):
    loaded = create_model("fake-moe-llm")
    moe_groups(loaded.module)[1].keep_only([3, 0, 1])
    save_moe_directory(loaded, tmp_path)
    assert not list(tmp_path.glob("*.bin"))
    again = load_model(str(tmp_path))  # dispatched by toolkit.json's family
    assert [g.num_experts for g in moe_groups(again.module)] == [4, 3]
    torch.testing.assert_close(logits(again.module, ids), logits(loaded.module, ids),
                               rtol=0, atol=0)
    assert again.module.lm_head.weight is again.module.model.embed_tokens.weight
    assert again.tokenizer.encode("edge") == loaded.tokenizer.encode("edge")


def test_artifact_with_a_wrong_moe_section_is_refused(tmp_path):
    loaded = create_model("fake-moe-llm")
    save_moe_directory(loaded, tmp_path)
    manifest = json.loads((tmp_path / "toolkit.json").read_text())
    for moe, message in (({"num_experts": 4, "top_k": 2, "layers": [4, 3]}, "does not match"),
                         ({"num_experts": 4, "top_k": 2, "layers": [4]}, "expert counts"),
                         ({"top_k": 2}, "no valid"),
                         ({"num_experts": 4, "top_k": 2, "layers": [4, 1]}, "at least")):
        manifest["moe"] = moe
        (tmp_path / "toolkit.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelError, match=message):
            load_model(str(tmp_path))


def test_install_moe_layers_builds_the_recorded_shape():
    model = create_model("fake-llama").module
    install_moe_layers(model, [3, 2], top_k=2)
    assert moe_section(model) == {"num_experts": 3, "top_k": 2, "layers": [3, 2]}
    with pytest.raises(ModelError, match="expert counts"):
        install_moe_layers(create_model("fake-llama").module, [3], top_k=2)
