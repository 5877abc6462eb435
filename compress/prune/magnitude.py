"""Magnitude pruning: score_ij = |W_ij|, zero the lowest per output row (or per N:M group).

The baseline every calibration-aware method is compared with (e.g. Wanda, arXiv
2306.11695, Table 2): it needs no calibration data, which is also why it degrades first.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from compress.prune.base import PruneConfig, register_pruner
from compress.prune.masks import prune_mask
from compress.stats import LinearStats


@dataclasses.dataclass
class MagnitudeConfig(PruneConfig):
    """Prune the smallest |W| in every output row; no calibration statistics needed."""

    method: ClassVar[str] = "magnitude"
    needs: ClassVar[frozenset[str]] = frozenset()


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """score_ij = |W_ij|."""
    return weight.abs()


@register_pruner(MagnitudeConfig)
def prune_weight(
    weight: torch.Tensor,
    stats: LinearStats,
    sparsity: float,
    nm: tuple[int, int] | None,
    config: PruneConfig,
) -> torch.Tensor:
    """A new fp32 copy of `weight` [out, in] with its lowest-|W| entries set to exactly 0."""
    w = weight.detach().to(torch.float32).clone()
    return w.masked_fill_(prune_mask(magnitude_scores(w), sparsity, nm), 0.0)
