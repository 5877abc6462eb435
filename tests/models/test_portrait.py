"""The portrait segmenter (models/portrait.py) and its channel surgery
(models/portrait_surgery.py): shapes and ranges of both registered configs, the deployed
map against a hand-written softmax, FLOPs against torch's own counter, export-friendly
ops, and pruning that keeps the output when the removed channels contributed nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import ModelError, create_model, list_models
from models.portrait import (
    FAKE_CONFIG,
    InvertedResidual,
    PortraitConfig,
    PortraitSegmenter,
    count_flops,
)
from models.portrait_surgery import expansion_widths, prunable_blocks, prune_expansion_channels


@pytest.fixture(scope="module")
def fake():
    return create_model("fake-portrait")


def pixels(loaded, count=2, seed=0):
    return loaded.vision.normalise(loaded.vision.images(count, seed))


@pytest.mark.parametrize("name, height, width", [("portrait-256", 256, 256),
                                                 ("portrait-144x256", 144, 256)])
def test_registered_configs_map_images_to_foreground_probabilities(name, height, width):
    loaded = create_model(name)
    assert loaded.vision.shape == (1, 3, height, width)
    assert "random init" in next(s.weights for s in list_models() if s.name == name)
    x = pixels(loaded)
    with torch.no_grad():
        deployed = loaded.module(x)
        logits, attributes = loaded.module.forward_train(x)
    assert deployed.shape == (2, 1, height, width)
    assert bool(((deployed >= 0) & (deployed <= 1)).all())
    assert logits.shape == (2, 3, height, width) and attributes.shape == (2, 4)
    # Deployed map = p_fg + p_boundary / 2 (the model spells the softmax out by hand).
    probs = torch.softmax(logits, dim=1)
    torch.testing.assert_close(deployed, probs[:, 1:2] + 0.5 * probs[:, 2:3],
                               rtol=1e-5, atol=1e-6)


def test_fake_is_small_non_square_deterministic_and_in_eval_mode(fake):
    assert not fake.module.training and fake.vision.shape == (1, 3, 32, 48)
    assert next(s for s in list_models() if s.name == "fake-portrait").fake
    again = create_model("fake-portrait")
    for (key, a), (_, b) in zip(fake.module.state_dict().items(),
                                again.module.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    images = fake.vision.images(3, 1)
    assert images.shape == (3, 3, 32, 48) and not torch.equal(images, fake.vision.images(3, 2))
    with torch.no_grad():
        out = fake.module(fake.vision.normalise(images))
    assert out.shape == (3, 1, 32, 48) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("kwargs", [dict(height=250), dict(width=16), dict(width_mult=0.0),
                                    dict(num_attributes=0)])
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ModelError):
        PortraitConfig(**kwargs)


@pytest.mark.parametrize("training", [False, True])
def test_flops_match_torch_flop_counter(fake, training):
    x = torch.zeros(1, 3, FAKE_CONFIG.height, FAKE_CONFIG.width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fake.module.forward_train(x) if training else fake.module(x)
    assert count_flops(fake.module, training=training) == counter.get_total_flops()


def test_stem_flops_by_hand():
    # 3x3 stride-2 conv, 3 -> 16 channels on 64x96: 32*48 outputs x 16 channels x 27 MACs.
    model = PortraitSegmenter(PortraitConfig(64, 96))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.stem(torch.zeros(1, 3, 64, 96))
    assert counter.get_total_flops() == 2 * 32 * 48 * 16 * 27


def test_deployed_graph_uses_only_convertible_ops(fake):
    x = torch.zeros(fake.vision.shape)
    program = torch.export.export(fake.module, (x,))
    ops = {str(node.target).split(".")[1] for node in program.graph.nodes
           if node.op == "call_function" and str(node.target).startswith("aten.")}
    allowed = {"conv2d", "_native_batch_norm_legit_no_training", "batch_norm", "hardtanh",
               "relu6", "upsample_bilinear2d", "add", "amax", "sub", "exp", "sum", "div",
               "slice", "mul", "getitem"}
    assert ops <= allowed, ops - allowed
    assert "conv2d" in ops and "upsample_bilinear2d" in ops


def zero_contributions(model: nn.Module, drop: dict[str, list[int]], how: str) -> None:
    """Make the hidden channels in `drop` contribute nothing to their block's output."""
    blocks = prunable_blocks(model)
    with torch.no_grad():
        for name, channels in drop.items():
            block = blocks[name]
            if how == "project":
                block.project_conv.weight[:, channels] = 0
            else:  # the depthwise norm outputs 0, ReLU6(0) = 0
                block.depthwise_bn.weight[channels] = 0
                block.depthwise_bn.bias[channels] = 0


@pytest.mark.parametrize("how", ["project", "norm"])
def test_pruning_zeroed_channels_keeps_the_output(fake, how):
    model = create_model("fake-portrait").module
    widths = expansion_widths(model)
    assert list(widths) == list(prunable_blocks(model))
    assert len(widths) == sum(1 for m in model.modules() if isinstance(m, InvertedResidual)
                              and m.expand_conv is not None)
    generator = torch.Generator().manual_seed(0)
    drop = {name: sorted(torch.randperm(w, generator=generator)[: w // 2].tolist())
            for name, w in widths.items()}
    zero_contributions(model, drop, how)
    keep = {name: [c for c in range(widths[name]) if c not in drop[name]] for name in widths}
    smaller = prune_expansion_channels(model, keep)
    assert expansion_widths(smaller) == {n: widths[n] - len(drop[n]) for n in widths}
    assert smaller.config.hidden_channels == tuple(expansion_widths(smaller).values())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(smaller) < count(model) and count_flops(smaller) < count_flops(model)
    x = pixels(fake, 4, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(smaller(x), model(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(smaller.forward_train(x).logits,
                                   model.forward_train(x).logits, rtol=1e-5, atol=1e-5)
        # The smaller network is rebuilt from its config and weights alone.
        rebuilt = PortraitSegmenter(smaller.config).eval()
        rebuilt.load_state_dict(smaller.state_dict())
        torch.testing.assert_close(rebuilt(x), smaller(x), rtol=0, atol=0)


def test_pruning_live_channels_changes_the_output_and_leaves_the_original(fake):
    model = fake.module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name, width = next(iter(expansion_widths(model).items()))
    # Half of them: random weights leave some channels dead (ReLU6 of a negative norm),
    # and removing only dead ones would change nothing.
    smaller = prune_expansion_channels(model, {name: range(width // 2)})
    assert not smaller.training
    x = pixels(fake)
    with torch.no_grad():
        assert not torch.allclose(smaller(x), model(x), atol=1e-4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("keep, message", [
    ({"encoder.0": [0]}, "no prunable block named encoder.0"),
    ({"encoder.1": []}, "keep at least one"),
    ({"encoder.1": [0, 0]}, "repeat"),
    ({"encoder.1": [10_000]}, "indices must be in"),
])
def test_bad_keep_lists_are_refused(fake, keep, message):
    with pytest.raises(ModelError, match=message):
        prune_expansion_channels(fake.module, keep)


def test_hidden_channels_must_name_every_expanding_block():
    with pytest.raises(ModelError, match="hidden_channels"):
        PortraitSegmenter(PortraitConfig(32, 32, width_mult=0.25, hidden_channels=(8, 8)))
