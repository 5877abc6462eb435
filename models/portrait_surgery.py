"""Structured surgery on the portrait segmenter: remove expansion channels of its inverted
residuals and rebuild a smaller network with the kept weights copied.

In an inverted residual (arXiv 1801.04381) hidden channel j is produced by row j of the
expand conv and its norm, filtered by depthwise filter j and its norm, and read by
column j of the project conv:

    y = BN_p(sum_j W_p[:, j] * ReLU6(BN_d,j(w_d,j (*) ReLU6(BN_e,j(W_e[j, :] * x)))))

so dropping j means dropping row j of W_e and BN_e, filter j of the depthwise conv and
BN_d, and column j of W_p. When channel j contributed nothing (W_p[:, j] = 0, or the
depthwise norm's scale and shift both 0) the smaller network computes exactly what the
original did. Which channels to drop is the pruner's decision (compress/); this module
only performs it. The result's config records the new widths (`hidden_channels`), so it
is rebuilt from config + weights like any other portrait model.

The segmenter's side of the channel-group protocol (models/channel_groups.py) lives here:
`expansion_groups` lists one `ExpansionGroup` per prunable block and
`keep_expansion_channels` rebuilds the network in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from models.errors import ModelError
from models.portrait import InvertedResidual, PortraitSegmenter

# Tensors indexed by hidden channel along dim 0, per prunable block (norm buffers too).
_ROWS = ("expand_conv.weight", "depthwise_conv.weight")
_NORMS = ("expand_bn", "depthwise_bn")
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


def prunable_blocks(model: PortraitSegmenter) -> dict[str, InvertedResidual]:
    """Name -> inverted residual, for every block with an expand conv, in the order of
    `PortraitConfig.hidden_channels` (encoder, then the decoder's refine blocks)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, InvertedResidual) and module.expand_conv is not None}


def expansion_widths(model: PortraitSegmenter) -> dict[str, int]:
    """Name -> hidden (expansion) width of every prunable block."""
    return {name: block.hidden for name, block in prunable_blocks(model).items()}


@dataclasses.dataclass
class ExpansionGroup:
    """The hidden channels of one inverted residual, as a `ChannelGroup`."""

    name: str
    block: InvertedResidual

    @property
    def width(self) -> int:
        return self.block.hidden

    def norm_scale(self) -> torch.Tensor:
        # The depthwise norm is the last thing a hidden channel passes before ReLU6 and
        # the project conv (compress/structured/channel_importance.py says why).
        return self.block.depthwise_bn.weight

    def producer_weight(self) -> torch.Tensor:
        return self.block.expand_conv.weight

    def gate_point(self) -> nn.Module:
        return self.block.project_conv

    def modules(self) -> list[nn.Module]:
        return [self.block.expand_conv, self.block.depthwise_conv, self.block.project_conv]


def expansion_groups(model: PortraitSegmenter) -> list[ExpansionGroup]:
    """One channel group per prunable block, in `prunable_blocks` order."""
    return [ExpansionGroup(name, block) for name, block in prunable_blocks(model).items()]


def keep_expansion_channels(model: PortraitSegmenter, keep: Mapping[str, Sequence[int]]
                            ) -> None:
    """`prune_expansion_channels`, in place: `model` takes the smaller network's modules
    and config, so a caller holding `model` (a recipe's later stages) sees the result."""
    smaller = prune_expansion_channels(model, keep)
    for name, child in smaller.named_children():
        setattr(model, name, child)
    model.config = smaller.config


def prune_expansion_channels(model: PortraitSegmenter, keep: Mapping[str, Sequence[int]]
                             ) -> PortraitSegmenter:
    """A new, smaller segmenter keeping only hidden channels `keep[name]` of each named
    block (blocks not named keep all of theirs); `model` is left unchanged."""
    blocks = prunable_blocks(model)
    unknown = sorted(set(keep) - set(blocks))
    if unknown:
        raise ModelError(f"no prunable block named {', '.join(unknown)}: choose among "
                         f"{', '.join(blocks)}")
    kept = {name: _checked_indices(name, keep[name], blocks[name].hidden) for name in keep}
    widths = tuple(len(kept[name]) if name in kept else block.hidden
                   for name, block in blocks.items())
    config = dataclasses.replace(model.config, hidden_channels=widths)
    smaller = PortraitSegmenter(config)
    state = model.state_dict()
    for name, index in kept.items():
        for key in _ROWS:
            state[f"{name}.{key}"] = state[f"{name}.{key}"][index]
        for norm in _NORMS:
            for tensor in _NORM_TENSORS:
                state[f"{name}.{norm}.{tensor}"] = state[f"{name}.{norm}.{tensor}"][index]
        state[f"{name}.project_conv.weight"] = state[f"{name}.project_conv.weight"][:, index]
    smaller.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    return smaller.train(model.training)


def _checked_indices(name: str, indices: Sequence[int], hidden: int) -> torch.Tensor:
    index = torch.as_tensor(list(indices), dtype=torch.long)
    if index.numel() == 0:
        raise ModelError(f"block {name} would keep no hidden channel: keep at least one")
    if index.unique().numel() != index.numel():
        raise ModelError(f"block {name}: kept channel indices repeat")
    if int(index.min()) < 0 or int(index.max()) >= hidden:
        raise ModelError(f"block {name} has {hidden} hidden channels: indices must be "
                         f"in 0..{hidden - 1}")
    return index.sort().values
