"""channel-prune through the channel-group protocol alone (models/channel_groups.py): a
tiny network written here, unknown to models/ and compress/, that lists its groups and
rebuilds itself is pruned like the portrait segmenter: the channels taylor finds
contribute nothing are the ones removed, the output is unchanged, and FLOPs per channel
are what removing one saves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compress
from compress.errors import CompressError
from compress.structured import ChannelPruneConfig
from models.channel_groups import ChannelPrunable, flops_per_channel

WIDTH, HIDDEN, CLASSES = 4, 16, 3


class Hidden:
    """The hidden channels of one expand -> norm -> ReLU -> project pair."""

    def __init__(self, name: str, expand: nn.Conv2d, norm: nn.BatchNorm2d, project: nn.Conv2d):
        self.name, self.expand, self.norm, self.project = name, expand, norm, project

    @property
    def width(self) -> int:
        return self.expand.out_channels

    def norm_scale(self) -> torch.Tensor:
        return self.norm.weight

    def producer_weight(self) -> torch.Tensor:
        return self.expand.weight

    def gate_point(self) -> nn.Module:
        return self.project

    def modules(self) -> list[nn.Module]:
        return [self.expand, self.project]


class TinyNet(nn.Module):
    def __init__(self, hidden: int = HIDDEN):
        super().__init__()
        self.expand = nn.Conv2d(WIDTH, hidden, 1, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.relu(self.norm(self.expand(x))))

    def channel_groups(self) -> list[Hidden]:
        return [Hidden("hidden", self.expand, self.norm, self.project)]

    def keep_channels(self, keep) -> None:
        index = torch.as_tensor(keep["hidden"])
        smaller = TinyNet(len(index))
        state = self.state_dict()
        for key in ("expand.weight", "norm.weight", "norm.bias", "norm.running_mean",
                    "norm.running_var"):
            state[key] = state[key][index]
        state["project.weight"] = state["project.weight"][:, index]
        smaller.load_state_dict(state)
        self.expand, self.norm, self.project = smaller.expand, smaller.norm, smaller.project

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, WIDTH, 5, 7)

    def flops(self) -> int:
        return 2 * 5 * 7 * (WIDTH * self.expand.out_channels + self.expand.out_channels * CLASSES)


def test_a_network_unknown_to_the_toolkit_is_pruned_through_the_protocol():
    torch.manual_seed(0)
    model = TinyNet().eval()
    assert isinstance(model, ChannelPrunable)
    dead = torch.arange(0, HIDDEN, 2)
    with torch.no_grad():  # even channels output exactly 0 after the norm and ReLU
        model.norm.weight[dead] = 0
        model.norm.bias[dead] = -1
    x = torch.randn(6, WIDTH, 5, 7)
    with torch.no_grad():
        before = model(x)
    report = compress.apply(model, ChannelPruneConfig(criterion="taylor", sparsity=0.5,
                                                      round_to=1, batch_size=3), x)
    assert report.blocks[0]["kept"] == list(range(1, HIDDEN, 2))
    assert model.expand.out_channels == HIDDEN // 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    assert (report.flops_before, report.flops_after) == (2 * 35 * 7 * HIDDEN,
                                                         2 * 35 * 7 * HIDDEN // 2)


def test_flops_per_channel_is_what_removing_one_saves():
    model = TinyNet()
    cost = flops_per_channel(model)["hidden"]
    before = model.flops()
    model.keep_channels({"hidden": list(range(HIDDEN - 3))})
    assert before - model.flops() == 3 * cost


def test_a_network_without_groups_is_refused_in_one_line():
    with pytest.raises(CompressError, match="has no prunable channel groups"):
        compress.apply(nn.Linear(3, 3), ChannelPruneConfig(), torch.zeros(2, 3))
