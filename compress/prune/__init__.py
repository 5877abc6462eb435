"""Pruning methods: importing this package registers magnitude, Wanda and SparseGPT.

Each method module registers its `prune_weight` with `compress.config`, so
`compress.apply(model, WandaConfig(...), calib)` and `MethodConfig.from_dict` find it.
"""

from compress.prune.base import PruneConfig, parse_pattern
from compress.prune.magnitude import MagnitudeConfig
from compress.prune.sparsegpt import SparseGPTConfig
from compress.prune.wanda import WandaConfig

__all__ = [
    "MagnitudeConfig",
    "PruneConfig",
    "SparseGPTConfig",
    "WandaConfig",
    "parse_pattern",
]
