"""What structured channel pruning needs from any network: its channel groups.

A *channel group* is a set of channels that live on one shared axis of several tensors:
hidden channel j of a MobileNetV2 inverted residual (arXiv 1801.04381) is row j of the
expand conv and its norm, depthwise filter j and its norm, and column j of the project
conv. Removing j removes it from all of them at once, and the network gets smaller with
no sparse kernel needed. The unit differs by architecture (an inverted residual's
expansion, a transformer MLP's hidden units, ...), so a network describes its own groups
and rebuilds itself; compress/structured talks only to this protocol, never to a model
class (the same way expert dropping talks to models/moe_groups.py).

A network that can be channel-pruned has these methods:

* `channel_groups()`: its groups, in a stable order;
* `keep_channels(keep)`: keep only channels `keep[name]` of each named group, in place
  (the module's children and config become those of the smaller network);
* `task_logits(x)`: the raw class scores the task loss reads, classes at dim 1
  ([N, C] or [N, C, H, W]): the Taylor criterion's loss and distillation's KL use them;
* `example_input()`: one input, to count FLOPs;
* `flops()`: FLOPs of one deployed forward on `example_input()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from models.errors import ModelError


@runtime_checkable
class ChannelGroup(Protocol):
    """One group of channels sharing an axis. Implementations are small views over a
    network's modules."""

    # A stable, human-readable name for reports and `keep_channels`, e.g. "encoder.3".
    name: str

    @property
    def width(self) -> int:
        """Channels in the group now."""
        ...

    def norm_scale(self) -> torch.Tensor:
        """[C] scale of the last norm the channels pass through (the bn-scale criterion)."""
        ...

    def producer_weight(self) -> torch.Tensor:
        """[C, ...] the weight whose row j produces channel j (the l1-filter criterion)."""
        ...

    def gate_point(self) -> nn.Module:
        """The module whose input carries the channels on dim 1 (after their activation):
        a forward pre-hook there multiplies them by gates m_j for the Taylor criterion."""
        ...

    def modules(self) -> list[nn.Module]:
        """Every conv/linear whose size scales with the group's width (FLOPs per channel)."""
        ...


@runtime_checkable
class ChannelPrunable(Protocol):
    def channel_groups(self) -> list[ChannelGroup]: ...

    def keep_channels(self, keep: Mapping[str, Sequence[int]]) -> None: ...

    def task_logits(self, x: torch.Tensor) -> torch.Tensor: ...

    def example_input(self) -> torch.Tensor: ...

    def flops(self) -> int: ...


def channel_prunable(model: nn.Module) -> ChannelPrunable:
    """`model` itself when it has channel groups, else a ModelError naming what to use."""
    if not isinstance(model, ChannelPrunable) or not model.channel_groups():
        raise ModelError(f"{type(model).__name__} has no prunable channel groups: channel "
                         "pruning needs a network that lists them (e.g. a portrait "
                         "segmenter: portrait-256, fake-portrait or a trained portrait "
                         "artifact)")
    return model


@torch.no_grad()
def flops_per_channel(model: ChannelPrunable) -> dict[str, float]:
    """Group name -> FLOPs one channel of it costs on `example_input()` (2 per multiply-
    add): the FLOPs of the group's modules in one eval forward, divided by its width.
    Every module listed scales linearly with the width, so this is what removing one
    channel saves."""
    groups = model.channel_groups()
    totals = {group.name: 0.0 for group in groups}
    hooks = []
    for group in groups:
        for module in group.modules():
            def count(module, _inputs, output, name=group.name):
                totals[name] += _layer_flops(module, output)
            hooks.append(module.register_forward_hook(count))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(model.example_input().to(device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return {group.name: totals[group.name] / group.width for group in groups}


def _layer_flops(module: nn.Module, output: torch.Tensor) -> float:
    """2 * multiply-adds of one conv or linear for the first item of the batch."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output[0].numel() * 2 * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output[0].numel() * 2 * module.in_features
    raise ModelError(f"cannot count FLOPs of {type(module).__name__}: a channel group's "
                     "modules must be Conv2d or Linear")
