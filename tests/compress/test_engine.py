"""The block-sequential engine: what each block is calibrated on, and what it prunes."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch

import compress
from compress.prune.base import PruneConfig, register_pruner
from compress.prune.masks import prune_mask
from compress.stats import SQ_NORM
from models import create_model, decoder_layout

SEEN: dict[str, torch.Tensor] = {}


@dataclasses.dataclass
class SpyConfig(PruneConfig):
    """Wanda-like test method that records the statistics the engine hands it."""

    method: ClassVar[str] = "spy-for-tests"
    needs: ClassVar[frozenset[str]] = frozenset({SQ_NORM})


@register_pruner(SpyConfig)
def spy_prune_weight(weight, stats, sparsity, nm, config):
    SEEN[getattr(stats, "_name", str(len(SEEN)))] = stats.sq_norm.clone()
    return weight.masked_fill(prune_mask(weight.abs() * stats.input_norm(), sparsity, nm), 0)


def _calib(n=4, length=24, vocab=259, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=generator)


def _input_sq_norm(model, calib, module_name):
    """Independent check: sum of squares of one linear's inputs in a full forward."""
    module = dict(model.named_modules())[module_name]
    total = torch.zeros(module.in_features, dtype=torch.float64)

    def hook(_m, args):
        total.add_(args[0].reshape(-1, module.in_features).double().square().sum(0))

    handle = module.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    handle.remove()
    return total


def test_block_i_plus_1_is_calibrated_on_pruned_block_i_outputs():
    SEEN.clear()
    loaded = create_model("fake-llama")
    calib = _calib()
    dense_stats = _input_sq_norm(loaded.module, calib, "model.layers.1.self_attn.q_proj")
    compress.apply(loaded.module, SpyConfig(sparsity=0.5), calib, batch_size=3)
    # SEEN is in pruning order: 7 linears of block 0 then 7 of block 1; q_proj comes first.
    seen_block1_q = list(SEEN.values())[7]
    pruned_stats = _input_sq_norm(loaded.module, calib, "model.layers.1.self_attn.q_proj")
    torch.testing.assert_close(seen_block1_q.double(), pruned_stats, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(seen_block1_q.double(), dense_stats, rtol=1e-3)


@pytest.mark.parametrize("name", ["fake-llama", "fake-mistral", "fake-qwen2", "fake-gemma"])
@pytest.mark.parametrize("config", [
    compress.MagnitudeConfig(sparsity=0.5),
    compress.WandaConfig(pattern="2:4"),
    compress.SparseGPTConfig(sparsity=0.6),
], ids=["magnitude", "wanda-2:4", "sparsegpt"])
def test_every_family_is_pruned_in_its_blocks_only(name, config):
    loaded = create_model(name)
    layout = decoder_layout(loaded.module)
    embed_before = layout.embeddings.weight.clone()
    report = compress.apply(loaded.module, config, _calib())
    torch.testing.assert_close(layout.embeddings.weight, embed_before)
    n_linears = sum(len(layout.block_linears(i)) for i in range(len(layout.blocks)))
    assert len(report.layer_sparsity) == n_linears
    modules = dict(loaded.module.named_modules())
    for layer, achieved in report.layer_sparsity.items():
        width = modules[layer].in_features  # each row prunes round(s * width) weights
        assert achieved == pytest.approx(round(config.sparsity * width) / width), layer
    assert report.overall_sparsity == pytest.approx(config.sparsity, abs=0.01)


def test_ignore_leaves_matching_linears_dense():
    loaded = create_model("fake-llama")
    report = compress.apply(loaded.module, compress.WandaConfig(ignore=("down_proj",)), _calib())
    assert sorted(report.ignored) == ["model.layers.0.mlp.down_proj",
                                      "model.layers.1.mlp.down_proj"]
    down = loaded.module.model.layers[0].mlp.down_proj.weight
    assert (down == 0).float().mean() < 0.01
    assert "model.layers.0.mlp.down_proj" not in report.layer_sparsity


def test_owl_allocates_around_the_mean_and_records_ratios():
    loaded = create_model("fake-llama")
    config = compress.WandaConfig(sparsity=0.6, layerwise="owl", owl_lambda=0.1)
    report = compress.apply(loaded.module, config, _calib())
    assert len(report.outlier_ratios) == 2
    assert sum(report.block_targets) / 2 == pytest.approx(0.6)
    assert all(0.5 - 1e-9 <= t <= 0.7 + 1e-9 for t in report.block_targets)
    for layer, achieved in report.layer_sparsity.items():
        block = int(layer.split(".")[2])
        assert achieved == pytest.approx(report.block_targets[block], abs=0.01)


def test_magnitude_needs_no_calibration_data():
    loaded = create_model("fake-llama")
    report = compress.apply(loaded.module, compress.MagnitudeConfig(sparsity=0.5), None)
    assert report.calib_tokens == 0
    assert report.seconds["forward"] == 0.0


def test_bf16_calibration_forward_still_accumulates_fp32_statistics():
    loaded = create_model("fake-llama")
    config = compress.SparseGPTConfig(sparsity=0.5)
    report = compress.apply(loaded.module, config, _calib(), forward_dtype=torch.bfloat16)
    assert report.forward_dtype == "bfloat16"
    assert loaded.module.model.layers[1].mlp.up_proj.weight.dtype == torch.float32
    assert report.overall_sparsity == pytest.approx(0.5)


def test_width_that_m_does_not_divide_names_the_layer():
    loaded = create_model("fake-llama")
    with pytest.raises(compress.CompressError, match=r"model\.layers\.0\..*_proj"):
        compress.apply(loaded.module, compress.WandaConfig(pattern="3:5"), _calib())
