"""Structured pruning: remove whole channels so the network itself gets smaller.

`channel-prune` (compress/structured/channel_prune.py) on any network that lists its
channel groups (models/channel_groups.py; today the portrait segmenter's inverted-residual
expansions), with the criteria of channel_importance.py (pure functions), the width
decisions of allocation.py, and distillation recovery for segmentation
(segmentation_distill.py). The surgery is the network's own (`keep_channels`); nothing
here imports a model class.
"""

from compress.structured.channel_importance import (
    bn_gate_gradients,
    bn_scale_scores,
    l1_filter_scores,
    random_scores,
    taylor_scores,
)
from compress.structured.channel_prune import (
    ALLOCATIONS,
    CHANNEL_CRITERIA,
    ChannelPruneConfig,
    ChannelPruneReport,
)

__all__ = [
    "ALLOCATIONS",
    "CHANNEL_CRITERIA",
    "ChannelPruneConfig",
    "ChannelPruneReport",
    "bn_gate_gradients",
    "bn_scale_scores",
    "l1_filter_scores",
    "random_scores",
    "taylor_scores",
]
