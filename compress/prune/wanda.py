"""Wanda: score_ij = |W_ij| * ||X_j||_2, pruned per output row, no weight update.

Wanda (Sun et al., arXiv 2306.11695): "pruning by weights and activations". ||X_j||_2 is
the norm of input feature j over all calibration tokens, so a small weight on a
large-activation (outlier) feature survives where magnitude pruning would drop it.
Weights compete only within their output row (or within each N:M group of that row).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from compress.prune.base import PruneConfig, register_pruner
from compress.prune.masks import prune_mask
from compress.stats import SQ_NORM, LinearStats


@dataclasses.dataclass
class WandaConfig(PruneConfig):
    """Prune by |W| * ||X||; needs only the per-feature squared input norms."""

    method: ClassVar[str] = "wanda"
    needs: ClassVar[frozenset[str]] = frozenset({SQ_NORM})


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """score_ij = |W_ij| * ||X_j||_2 for weight [out, in] and input_norm [in]."""
    if input_norm.shape != weight.shape[-1:]:
        raise ValueError(
            f"input_norm has shape {tuple(input_norm.shape)}, the weight "
            f"{tuple(weight.shape)} needs [{weight.shape[-1]}]"
        )
    return weight.abs() * input_norm.to(weight.device, weight.dtype).unsqueeze(0)


@register_pruner(WandaConfig)
def prune_weight(
    weight: torch.Tensor,
    stats: LinearStats,
    sparsity: float,
    nm: tuple[int, int] | None,
    config: PruneConfig,
) -> torch.Tensor:
    """A new fp32 copy of `weight` with its lowest Wanda scores set to exactly 0."""
    w = weight.detach().to(torch.float32).clone()
    scores = wanda_scores(w, stats.input_norm())
    return w.masked_fill_(prune_mask(scores, sparsity, nm), 0.0)
