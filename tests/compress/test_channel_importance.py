"""Channel importance criteria (compress/structured/channel_importance.py) and width
allocation (compress/structured/allocation.py) against numbers computed by hand or by an
independent route: each criterion's formula on a hand-made case, the Taylor gate
gradient against activation x gradient at the project conv's input (and against the
paper's norm form where no pixel saturates ReLU6), rounding to lane multiples, uniform
and global allocation."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from compress.errors import CompressError
from compress.structured import allocation
from compress.structured.channel_importance import (
    bn_gate_gradients,
    bn_scale_scores,
    l1_filter_scores,
    random_scores,
    taylor_scores,
)
from compress.structured.channel_prune import ChannelPruneConfig, channel_scores, choose_widths
from models import create_model
from models.portrait_surgery import prunable_blocks

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fake():
    return create_model("fake-portrait")


def test_bn_scale_is_the_magnitude_of_gamma_and_keeps_the_largest():
    gamma = torch.tensor([0.5, -2.0, 0.1, 1.0, -0.05])
    scores = bn_scale_scores(gamma)
    assert scores.tolist() == pytest.approx([0.5, 2.0, 0.1, 1.0, 0.05])
    assert allocation.keep_indices(scores, 2) == [1, 3]  # |-2| and |1|: sign is irrelevant


def test_l1_filter_sums_absolute_weights_per_output_channel():
    weight = torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 0.0]]).view(3, 2, 1, 1)
    by_hand = [abs(1.0) + abs(-2.0), 0.5 + 0.5, 3.0]
    assert l1_filter_scores(weight).tolist() == pytest.approx(by_hand)
    assert allocation.keep_indices(l1_filter_scores(weight), 2) == [0, 2]
    # A 3x3 filter counts all nine taps.
    assert l1_filter_scores(-torch.ones(2, 4, 3, 3)).tolist() == [36.0, 36.0]


def test_taylor_squares_each_batch_then_sums():
    g = torch.tensor([[1.0, -1.0, 0.0], [2.0, 1.0, 0.0]])  # batches x channels
    assert taylor_scores(g).tolist() == pytest.approx([1 + 4, 1 + 1, 0.0])
    # (1 - 1)^2 = 0 would be the square of a sum over batches; per batch it is 2
    assert taylor_scores(g)[1] > 0
    with pytest.raises(CompressError):
        taylor_scores(torch.ones(3))


def test_bn_gate_gradients_by_hand():
    gamma, beta = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    gg = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    gb = torch.tensor([[0.0, 1.0], [1.0, -3.0]])
    assert bn_gate_gradients(gamma, beta, gg, gb).tolist() == [[1.0, 1.0], [2.0, -1.0]]
    assert taylor_scores(bn_gate_gradients(gamma, beta, gg, gb)).tolist() == [5.0, 2.0]


def test_random_scores_are_seeded():
    assert torch.equal(random_scores(16, 3), random_scores(16, 3))
    assert not torch.equal(random_scores(16, 3), random_scores(16, 4))


def _activation_times_gradient(model, images):
    """Independent route: per batch, sum_p a_j(p) dL/da_j(p) at every project conv's
    input, from retained activation gradients (no gate), then squared per batch."""
    blocks = prunable_blocks(model)
    inputs = {}

    def keep(name):
        def hook(_module, args):
            args[0].retain_grad()
            inputs[name] = args[0]
        return hook

    hooks = [b.project_conv.register_forward_pre_hook(keep(n)) for n, b in blocks.items()]
    totals = {name: 0 for name in blocks}
    try:
        for batch in images.split(4):
            logits = model.forward_train(batch).logits
            F.cross_entropy(logits, logits.detach().argmax(dim=1)).backward()
            for name, a in inputs.items():
                per_batch = (a.detach() * a.grad).sum(dim=(0, 2, 3)).double()
                totals[name] = totals[name] + per_batch ** 2
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
    return totals


def test_taylor_on_the_segmenter_is_activation_times_gradient(fake):
    images = fake.vision.normalise(fake.vision.images(8, 3))
    config = ChannelPruneConfig(criterion="taylor", batch_size=4)
    scores = channel_scores(fake.module, config, images, None)
    expected = _activation_times_gradient(fake.module, images)
    assert all(p.grad is None for p in fake.module.parameters())  # the criterion wrote none
    for name, value in expected.items():
        torch.testing.assert_close(scores[name].double(), value, rtol=1e-4, atol=1e-12)
        assert float(value.detach().max()) > 0


def test_taylor_equals_the_norm_form_where_nothing_saturates(fake):
    """gamma dL/dgamma + beta dL/dbeta (arXiv 1906.10771's BN gate) equals the gate
    after ReLU6 for a block whose channels never reach 6 on these images."""
    model = create_model("fake-portrait").module
    images = fake.vision.normalise(fake.vision.images(4, 3))
    name, block = next(iter(prunable_blocks(model).items()))
    seen = {}

    def record(_module, args):
        seen["a"] = args[0].detach()  # returns None: the input goes on unchanged

    hook = block.project_conv.register_forward_pre_hook(record)
    logits = model.forward_train(images).logits
    hook.remove()
    assert float(seen["a"].max()) < 6  # else the two forms differ (the docstring's point)
    F.cross_entropy(logits, logits.detach().argmax(dim=1)).backward()
    bn = block.depthwise_bn
    norm_form = bn_gate_gradients(bn.weight, bn.bias, bn.weight.grad[None], bn.bias.grad[None])
    scores = channel_scores(model, ChannelPruneConfig(batch_size=4), images, None)
    torch.testing.assert_close(scores[name].double(), taylor_scores(norm_form).double(),
                               rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("width, hidden, round_to, expected", [
    (41, 64, 8, 40), (44, 64, 8, 48), (12, 96, 8, 16), (3, 96, 8, 8), (70, 64, 8, 64),
    (20, 20, 8, 20), (19, 20, 8, 20), (13, 20, 8, 16), (5, 6, 8, 6), (7, 30, 1, 7)])
def test_round_width_picks_the_nearest_lane_multiple_or_all(width, hidden, round_to, expected):
    assert allocation.round_width(width, hidden, round_to) == expected


def test_uniform_widths_remove_the_same_share_everywhere():
    hidden = {"a": 64, "b": 96, "c": 16, "d": 8}
    assert allocation.uniform_widths(hidden, 0.5, 8) == {"a": 32, "b": 48, "c": 8, "d": 8}
    assert allocation.uniform_widths(hidden, 0.25, 8) == {"a": 48, "b": 72, "c": 16, "d": 8}


def test_global_widths_remove_the_lowest_scores_over_all_blocks_above_the_floor():
    scores = {"a": torch.tensor([9.0, 8, 7, 6, 5, 4, 3, 2]),
              "b": torch.tensor([0.1, 0.2, 0.3, 0.4, 10, 11, 12, 13])}
    # 8 of 16 go: all four of b's below 1, then a's 2, 3, 4, 5.
    assert allocation.global_widths(scores, 0.5, 1, floor=0.25) == {"a": 4, "b": 4}
    # A floor of 3/4 protects the top 6 of each block: only 2 + 2 may go.
    assert allocation.global_widths(scores, 0.5, 1, floor=0.75) == {"a": 6, "b": 6}
    low = {"a": torch.arange(16.0), "b": torch.full((16,), 0.5)}
    # 16 go: a's 0, b's 12 above its floor of 4, a's 1, 2, 3. Widths a 12, b 4, rounded
    # to lanes of 8: 12 is halfway between 8 and 16 (keep more), 4 goes up to 8.
    assert allocation.global_widths(low, 0.5, 8, floor=0.25) == {"a": 16, "b": 8}


def test_global_l1_ranking_compares_blocks_relative_to_their_mean():
    # Block b's filters are 10x larger only because of its fan-in: same relative spread.
    a = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8])
    config = ChannelPruneConfig(criterion="l1-filter", allocation="global", round_to=1)
    assert choose_widths({"a": a, "b": 10 * a}, config) == {"a": 4, "b": 4}
    raw = ChannelPruneConfig(criterion="bn-scale", allocation="global", round_to=1)
    assert choose_widths({"a": a, "b": 10 * a}, raw) == {"a": 2, "b": 6}  # floor 2 of 8


def test_keep_indices_breaks_ties_towards_the_lower_index():
    assert allocation.keep_indices(torch.tensor([1.0, 1, 1, 2]), 2) == [0, 3]
    with pytest.raises(CompressError):
        allocation.keep_indices(torch.ones(4), 0)


def test_flop_weighted_widths_remove_least_score_per_flop_until_the_budget():
    scores = {"a": torch.tensor([4.0, 3, 2, 1]), "b": torch.tensor([4.0, 3, 2, 1])}
    costs = {"a": 1.0, "b": 4.0}  # b's channels cost 4x: score per FLOP 1, .75, .5, .25
    # Total 4 * 1 + 4 * 4 = 20 FLOPs; half is 10: b's .25, .5, .75 go (12 >= 10).
    assert allocation.flop_weighted_widths(scores, costs, 0.5, 1, 0.25) == {"a": 4, "b": 1}
    assert allocation.flop_weighted_widths(scores, costs, 0.2, 1, 0.25) == {"a": 4, "b": 3}
    # Without the cost, a's 1 would go before b's 2.
    assert allocation.global_widths(scores, 0.5, 1, 0.25) == {"a": 2, "b": 2}


def test_flops_per_hidden_channel_is_what_removing_one_saves(fake):
    from models.channel_groups import flops_per_channel
    from models.portrait import count_flops
    from models.portrait_surgery import prune_expansion_channels

    model = fake.module
    blocks = prunable_blocks(model)
    costs = flops_per_channel(model)
    for name in ("encoder.1", "encoder.11", "decoder.3.refine"):
        keep = {name: range(blocks[name].hidden - 8)}
        saved = count_flops(model) - count_flops(prune_expansion_channels(model, keep))
        assert saved == 8 * costs[name]
