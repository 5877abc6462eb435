"""`channel-prune` on the fake portrait segmenter: channels that contribute nothing are
the ones removed and the output is unchanged; the rebuilt network's params and FLOPs
match counts made independently; widths are lane multiples; KD recovery brings the
student closer to the unpruned teacher; bad knobs and non-portrait models are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

import compress
from compress.distill import label_loss
from compress.errors import CompressError
from compress.structured import allocation
from compress.structured.channel_prune import ChannelPruneConfig, channel_scores, choose_widths
from models import create_model
from models.portrait import PortraitSegmenter
from models.portrait_surgery import expansion_widths, prunable_blocks

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images():
    loaded = create_model("fake-portrait")
    return loaded.vision.normalise(loaded.vision.images(16, 7))


def kill_half(model, seed=0) -> dict[str, list[int]]:
    """Zero a seeded half of every block's hidden channels: expand rows (so their L1 is
    0) and the depthwise norm's gamma and beta (so they output exactly 0). Returns the
    live channels per block."""
    generator = torch.Generator().manual_seed(seed)
    live = {}
    with torch.no_grad():
        for name, block in prunable_blocks(model).items():
            order = torch.randperm(block.hidden, generator=generator)
            dead = order[:block.hidden // 2]
            block.expand_conv.weight[dead] = 0
            block.depthwise_bn.weight[dead] = 0
            block.depthwise_bn.bias[dead] = 0
            live[name] = sorted(order[block.hidden // 2:].tolist())
    return live


def outputs(model, x):
    with torch.no_grad():
        return model(x), model.forward_train(x).logits


@pytest.mark.parametrize("criterion", ["bn-scale", "l1-filter"])
def test_weight_criteria_remove_exactly_the_zeroed_channels_output_unchanged(criterion, images):
    model = create_model("fake-portrait").module
    live = kill_half(model)
    before = outputs(model, images)
    report = compress.apply(model, ChannelPruneConfig(criterion=criterion, sparsity=0.5), None)
    assert {b["name"]: b["kept"] for b in report.blocks} == live
    for new, old in zip(outputs(model, images), before, strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=1e-6)


def test_taylor_removes_only_channels_silent_on_the_calibration_images(images):
    model = create_model("fake-portrait").module
    kill_half(model)
    silent = {}
    hooks = [b.project_conv.register_forward_pre_hook(
        lambda _m, args, name=name: silent.__setitem__(name, args[0].abs().amax((0, 2, 3)) == 0))
        for name, b in prunable_blocks(model).items()]
    before = outputs(model, images)
    for hook in hooks:
        hook.remove()
    report = compress.apply(model, ChannelPruneConfig(criterion="taylor", sparsity=0.5), images)
    for block in report.blocks:
        removed = sorted(set(range(block["hidden_before"])) - set(block["kept"]))
        assert bool(silent[block["name"]][removed].all()), block["name"]
    for new, old in zip(outputs(model, images), before, strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=1e-6)


def test_channels_with_zero_project_columns_are_removed_without_changing_the_output(images):
    """The random criterion's choice, made silent beforehand by zeroing the project conv's
    columns of exactly the channels it will drop (global allocation: irregular widths)."""
    model = create_model("fake-portrait").module
    config = ChannelPruneConfig(criterion="random", allocation="global", seed=3)
    scores = channel_scores(model, config, None, None)
    widths = choose_widths(scores, config)
    with torch.no_grad():
        for name, block in prunable_blocks(model).items():
            kept = allocation.keep_indices(scores[name], widths[name])
            dropped = sorted(set(range(block.hidden)) - set(kept))
            block.project_conv.weight[:, dropped] = 0
    before = outputs(model, images)
    report = compress.apply(model, config, None)
    assert expansion_widths(model) == widths
    for new, old in zip(outputs(model, images), before, strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=1e-6)
    assert report.sparsity["achieved"] == pytest.approx(
        1 - sum(widths.values()) / sum(s.numel() for s in scores.values()))


def expected_params(model, widths) -> int:
    """Params after removing hidden channels, counted per removed channel: one expand
    row (in), expand norm (2), a 3x3 depthwise filter (9), depthwise norm (2) and one
    project column (out)."""
    total = sum(p.numel() for p in model.parameters())
    for name, block in prunable_blocks(model).items():
        removed = block.hidden - widths[name]
        per_channel = block.expand_conv.in_channels + 2 + 9 + 2 + block.project_conv.out_channels
        total -= removed * per_channel
    return total


@pytest.mark.parametrize("allocation_mode", ["uniform", "global"])
def test_smaller_network_has_counted_params_flops_and_lane_widths(allocation_mode, images):
    model = create_model("fake-portrait").module
    original = copy.deepcopy(model)
    config = ChannelPruneConfig(criterion="l1-filter", allocation=allocation_mode, sparsity=0.5)
    report = compress.apply(model, config, None)
    widths = expansion_widths(model)
    assert all(w % 8 == 0 and w >= 8 for w in widths.values())
    assert widths == {b["name"]: b["hidden_after"] for b in report.blocks}
    assert model.config.hidden_channels == tuple(widths.values())
    assert 0.4 < report.sparsity["achieved"] <= 0.5
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.params_after == expected_params(original, widths) < report.params_before
    x = torch.zeros(1, 3, 32, 48)
    with FlopCounterMode(display=False) as after, torch.no_grad():
        model(x)
    with FlopCounterMode(display=False) as before, torch.no_grad():
        original(x)
    assert report.flops_after == after.get_total_flops() < before.get_total_flops()
    assert report.flops_before == before.get_total_flops()
    # Rebuilt from its config and weights alone, as an artifact loader does.
    rebuilt = PortraitSegmenter(model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(outputs(rebuilt, images), outputs(model, images), rtol=0, atol=0)


def pixel_kl(teacher, student, x) -> float:
    """mean over pixels of KL(softmax(z_t) || softmax(z_s)) over the 3 classes."""
    with torch.no_grad():
        t = F.log_softmax(teacher.forward_train(x).logits.double(), dim=1)
        s = F.log_softmax(student.forward_train(x).logits.double(), dim=1)
    return float((t.exp() * (t - s)).sum(dim=1).mean())


def test_kd_recovery_brings_the_pruned_student_closer_to_the_teacher(images):
    model = create_model("fake-portrait").module
    teacher = copy.deepcopy(model)
    config = ChannelPruneConfig(criterion="random", sparsity=0.5, recover="kd",
                                recover_steps=8, batch_size=8)
    report = compress.apply(model, config, images)
    recovery = report.recovery
    assert recovery["steps"] == 8 and recovery["final_kl"] < recovery["initial_kl"]
    # The report's KL is the per-pixel KL at T = 1 on the first batch, by hand here.
    assert recovery["final_kl"] == pytest.approx(pixel_kl(teacher, model, images[:8]),
                                                 rel=1e-4)
    assert not model.training
    # Norm statistics stayed the teacher's (kept channels), only weights trained.
    for name, block in prunable_blocks(model).items():
        kept = next(b["kept"] for b in report.blocks if b["name"] == name)
        old = prunable_blocks(teacher)[name].depthwise_bn.running_mean[kept]
        torch.testing.assert_close(block.depthwise_bn.running_mean, old, rtol=0, atol=0)


def test_soft_label_task_term_is_the_soft_cross_entropy():
    logits = torch.randn(2, 4, 5, 3)
    labels = torch.softmax(torch.randn(2, 4, 5, 3), dim=-1)
    by_hand = -(labels * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(label_loss(logits, labels), by_hand)
    hard = torch.randint(0, 3, (2, 4, 5))
    torch.testing.assert_close(label_loss(logits, hard),
                               F.cross_entropy(logits.reshape(-1, 3), hard.reshape(-1)))


def test_recovery_with_soft_labels_runs_and_stays_finite(images):
    model = create_model("fake-portrait").module
    labels = torch.softmax(torch.randn(images.shape[0], 3, 32, 48), dim=1)
    config = ChannelPruneConfig(criterion="taylor", recover="kd", recover_steps=2,
                                recover_alpha=0.5)
    report = compress.apply(model, config, images, labels=labels)
    assert report.recovery["alpha"] == 0.5 and torch.isfinite(torch.tensor(
        report.recovery["final_loss"]))


@pytest.mark.parametrize("knobs, word", [
    (dict(sparsity=0.0), "sparsity"), (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=1.5), "sparsity"), (dict(sparsity=-0.1), "sparsity"),
    (dict(sparsity="half"), "sparsity"), (dict(sparsity=True), "sparsity"),
    (dict(criterion="magnitude"), "criterion"), (dict(allocation="layer"), "allocation"),
    (dict(round_to=0), "round_to"), (dict(recover="ft"), "recover"),
    (dict(min_keep=0.0), "min_keep"), (dict(recover_alpha=2.0), "recover_alpha")])
def test_bad_knobs_name_themselves(knobs, word):
    with pytest.raises(CompressError, match=word):
        ChannelPruneConfig(**knobs)


@pytest.mark.parametrize("name", ["fake-cnn", "fake-vmoe"])
def test_non_portrait_models_are_refused(name):
    with pytest.raises(CompressError, match="portrait"):
        compress.apply(create_model(name).module, ChannelPruneConfig(criterion="bn-scale"),
                       None)


def test_taylor_and_kd_need_images():
    model = create_model("fake-portrait").module
    with pytest.raises(CompressError, match="calibration images"):
        compress.apply(model, ChannelPruneConfig(criterion="taylor"), None)
    with pytest.raises(CompressError, match="calibration images"):
        compress.apply(model, ChannelPruneConfig(criterion="bn-scale", recover="kd"), None)


def test_recovery_that_makes_the_student_worse_is_undone(images):
    """Removing exactly-silent channels leaves KL 0; any training can only raise it, so
    the pruned weights are put back as they were."""
    model = create_model("fake-portrait").module
    kill_half(model)
    before = outputs(model, images)
    config = ChannelPruneConfig(criterion="bn-scale", recover="kd", recover_steps=3,
                                recover_lr=1e-2)
    report = compress.apply(model, config, images)
    assert report.recovery["reverted"] and report.recovery["final_kl"] > 0
    for new, old in zip(outputs(model, images), before, strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=1e-6)


def test_global_flops_removes_the_requested_share_of_expansion_flops(images):
    from models.channel_groups import flops_per_channel

    model = create_model("fake-portrait").module
    blocks = prunable_blocks(model)
    costs = flops_per_channel(model)
    prunable = sum(costs[n] * b.hidden for n, b in blocks.items())
    config = ChannelPruneConfig(criterion="taylor", allocation="global-flops", sparsity=0.5)
    report = compress.apply(model, config, images)
    removed = report.flops_before - report.flops_after
    assert removed == sum(costs[b["name"]] * (b["hidden_before"] - b["hidden_after"])
                          for b in report.blocks)
    assert 0.4 < removed / prunable < 0.6  # the greedy stops past 0.5, rounding moves it
    assert all(w % 8 == 0 for w in expansion_widths(model).values())
