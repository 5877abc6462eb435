"""MoE LMs in transformers' Mixtral layout (models/mixtral_layout.py, models/mixtral_io.py):
what we write loads in plain transformers as a MixtralForCausalLM with our logits, a
Mixtral checkpoint (ours or transformers') loads back into our SparseMoeBlock model, and a
model Mixtral cannot describe keeps the toolkit layout and says why."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import create_model, load_model
from models.errors import ModelError
from models.fake_llm import byte_level_tokenizer
from models.mixtral_io import MIXTRAL_LAYOUT, TOOLKIT_LAYOUT, write_moe_lm_weights
from models.mixtral_layout import from_mixtral_state, mixtral_misfit, to_mixtral_state
from models.moe_groups import moe_groups
from models.moe_lm import SparseMoeBlock
from models.upcycle import moe_section, upcycle_llama

IDS = torch.tensor([[1, 40, 41, 72, 101, 108, 108, 111, 33, 9, 200, 17]])


def logits(module: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return module(input_ids=IDS).logits


def save_directory(loaded, path, manifest=True) -> dict:
    """Weights as models.mixtral_io writes them, the tokenizer and (optionally) the
    toolkit.json section the artifact writers add (toolkit/ is not imported here)."""
    note = write_moe_lm_weights(loaded.module, path)
    loaded.tokenizer.save_pretrained(path)
    if manifest:
        section = {**moe_section(loaded.module), **note}
        (path / "toolkit.json").write_text(json.dumps({"family": "moe-llm", "moe": section}))
    return note


def test_plain_transformers_loads_a_mixtral_with_our_logits(tmp_path):
    from transformers import AutoModelForCausalLM, MixtralForCausalLM

    loaded = create_model("fake-moe-llm")
    assert save_directory(loaded, tmp_path) == {"layout": MIXTRAL_LAYOUT}
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["num_local_experts"],
            config["num_experts_per_tok"]) == ("mixtral", 4, 2)
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in keys
    assert "lm_head.weight" not in keys  # tied, as transformers writes it
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(hf, MixtralForCausalLM)
    torch.testing.assert_close(logits(hf), logits(loaded.module), rtol=1e-5, atol=1e-5)
    # Its weights are ours, not re-initialised: the router of layer 1 is our router.
    torch.testing.assert_close(hf.model.layers[1].mlp.gate.weight,
                               loaded.module.model.layers[1].mlp.router.weight)


def test_expert_dropped_model_round_trips_through_the_mixtral_layout(tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = create_model("fake-moe-llm")
    for group, keep in zip(moe_groups(loaded.module), ([3, 0, 1], [1, 2, 3]), strict=True):
        group.keep_only(keep)  # the same count everywhere, as drop-experts leaves it
    save_directory(loaded, tmp_path)
    again = load_model(str(tmp_path))
    blocks = [layer.mlp for layer in again.module.model.layers]
    assert all(isinstance(b, SparseMoeBlock) and b.num_experts == 3 for b in blocks)
    torch.testing.assert_close(logits(again.module), logits(loaded.module), rtol=0, atol=0)
    assert again.module.lm_head.weight is again.module.model.embed_tokens.weight
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(hf), logits(loaded.module), rtol=1e-5, atol=1e-5)
    moe_groups(again.module)[0].keep_only([0, 2])  # still editable by expert dropping
    assert logits(again.module).isfinite().all()


def test_uneven_expert_counts_keep_the_toolkit_layout_and_say_why(tmp_path):
    loaded = create_model("fake-moe-llm")
    moe_groups(loaded.module)[1].keep_only([3, 0, 1])
    note = save_directory(loaded, tmp_path)
    assert note["layout"] == TOOLKIT_LAYOUT and "[4, 3]" in note["layout_reason"]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    again = load_model(str(tmp_path))
    torch.testing.assert_close(logits(again.module), logits(loaded.module), rtol=0, atol=0)


def test_misfits_are_named():
    qwen = create_model("fake-qwen2").module
    upcycle_llama(qwen, 2, 1)
    assert "qwen2" in mixtral_misfit(qwen)
    assert "not every decoder layer" in mixtral_misfit(create_model("fake-llama").module)
    assert mixtral_misfit(create_model("fake-moe-llm").module) is None


def tiny_mixtral(**overrides):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=259, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=3, num_experts_per_tok=2,
                           max_position_embeddings=256, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = MixtralForCausalLM(config).eval()
    with torch.no_grad():  # transformers' init leaves the routers near uniform
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
    return model


def test_a_transformers_mixtral_checkpoint_loads_into_our_moe_blocks(tmp_path):
    mixtral = tiny_mixtral()
    mixtral.save_pretrained(tmp_path)  # transformers' own on-disk names
    byte_level_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))  # no toolkit.json: recognised by config.json
    blocks = [layer.mlp for layer in loaded.module.model.layers]
    assert all(isinstance(b, SparseMoeBlock) and (b.num_experts, b.top_k) == (3, 2)
               for b in blocks)
    torch.testing.assert_close(logits(loaded.module), logits(mixtral), rtol=1e-5, atol=1e-5)


def test_fused_in_memory_names_convert_like_the_on_disk_ones():
    mixtral = tiny_mixtral()
    fused = from_mixtral_state(mixtral.state_dict(), "memory")
    on_disk = {f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight": t
               for e in range(3) for w, t in
               (("w1", fused["model.layers.0.mlp.gate_proj"][e]),
                ("w3", fused["model.layers.0.mlp.up_proj"][e]),
                ("w2", fused["model.layers.0.mlp.down_proj"][e]))}
    again = from_mixtral_state(on_disk, "disk")
    for part in ("gate_proj", "up_proj", "down_proj"):
        torch.testing.assert_close(again[f"model.layers.0.mlp.{part}"],
                                   fused[f"model.layers.0.mlp.{part}"], rtol=0, atol=0)
    gate_up = mixtral.model.layers[0].mlp.experts.gate_up_proj
    torch.testing.assert_close(fused["model.layers.0.mlp.gate_proj"], gate_up[:, :48])
    assert set(to_mixtral_state({"model.layers.0.mlp.gate_proj": gate_up[:, :48]})) == {
        f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight" for e in range(3)}


def test_broken_mixtral_directories_are_refused(tmp_path):
    save_directory(create_model("fake-moe-llm"), tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    missing = dict(state)
    del missing["model.layers.1.block_sparse_moe.experts.1.w2.weight"]
    save_file(missing, weights)
    with pytest.raises(ModelError, match=r"experts\.1\.w2\.weight: restore"):
        load_model(str(tmp_path))
    save_file(state, weights)
    manifest = json.loads((tmp_path / "toolkit.json").read_text())
    manifest["moe"]["layers"] = [4, 3]
    (tmp_path / "toolkit.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"records \[4, 3\] experts per layer"):
        load_model(str(tmp_path))


def test_a_sliding_window_mixtral_is_refused(tmp_path):
    tiny_mixtral(sliding_window=16).save_pretrained(tmp_path)
    byte_level_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="16-token sliding window"):
        load_model(str(tmp_path))
