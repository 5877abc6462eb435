"""How many hidden channels each block keeps, and which: pure functions from per-block
scores to kept widths and kept channel indices.

    uniform   k_b = R(h_b (1 - s))                 every block loses the same share
    global    remove the round(s * sum_b h_b) lowest scores over all blocks, never
              touching the top ceil(f * h_b) of a block (the floor f), then
              k_b = R(h_b - removed_b)
    global-flops  the same pool, removed in increasing order of score / c_b, where c_b
              is the FLOPs one hidden channel of block b costs, until the removed FLOPs
              reach s * sum_b h_b c_b (greedy knapsack: least importance per FLOP saved
              first). A loss-based global ranking alone keeps the high-resolution blocks,
              where a channel costs most, and saves little time.

R rounds to the nearest multiple of `round_to` in [round_to, h_b] (or keeps h_b): phone
CPUs and NPUs load 8 or 16 lanes at a time (NEON: 4 fp32 / 8 fp16 per 128-bit register,
XNNPACK packs output channels in tiles of 8 or 16), so a width of 41 runs no faster than
48, and pruning below a tile saves parameters but not time. Rounding moves the achieved
sparsity away from s a little; the report states it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from compress.errors import CompressError


def round_width(width: float, hidden: int, round_to: int) -> int:
    """The candidate nearest `width` among the multiples of `round_to` in
    [round_to, hidden] and `hidden` itself; a tie keeps the larger (prune less)."""
    candidates = [*range(round_to, hidden + 1, round_to), hidden]
    return min(candidates, key=lambda k: (abs(k - width), -k))


def uniform_widths(hidden: Mapping[str, int], sparsity: float, round_to: int
                   ) -> dict[str, int]:
    """k_b = R(h_b (1 - s)) for every block."""
    return {name: round_width(h * (1 - sparsity), h, round_to) for name, h in hidden.items()}


def global_widths(scores: Mapping[str, torch.Tensor], sparsity: float, round_to: int,
                  floor: float) -> dict[str, int]:
    """Remove the round(s * total) lowest-scoring channels of all blocks together, each
    block keeping at least its top ceil(floor * h_b) (so no block is emptied or starved
    into a bottleneck), then round every block's width with R."""
    pool = []
    for name, block_scores in scores.items():
        h = block_scores.numel()
        protected = min(h, max(1, math.ceil(floor * h)))
        order = _descending(block_scores)
        pool += [(float(block_scores[c]), name, int(c)) for c in order[protected:]]
    total = sum(s.numel() for s in scores.values())
    count = min(len(pool), round(sparsity * total))
    removed = dict.fromkeys(scores, 0)
    # Ties (equal scores, e.g. an untrained network's norms all 1) go by block order then
    # channel index, so the choice is reproducible.
    for _, name, _ in sorted(pool, key=lambda item: item[0])[:count]:
        removed[name] += 1
    return {name: round_width(s.numel() - removed[name], s.numel(), round_to)
            for name, s in scores.items()}


def flop_weighted_widths(scores: Mapping[str, torch.Tensor], costs: Mapping[str, float],
                         sparsity: float, round_to: int, floor: float) -> dict[str, int]:
    """Remove channels with the least score per FLOP first, each block keeping its top
    ceil(floor * h_b), until `sparsity` of the expansion FLOPs are gone; round with R."""
    pool = []
    for name, block_scores in scores.items():
        h = block_scores.numel()
        protected = min(h, max(1, math.ceil(floor * h)))
        order = _descending(block_scores)
        pool += [(float(block_scores[c]) / costs[name], name) for c in order[protected:]]
    budget = sparsity * sum(costs[name] * s.numel() for name, s in scores.items())
    removed, spent = dict.fromkeys(scores, 0), 0.0
    for _, name in sorted(pool, key=lambda item: item[0]):
        if spent >= budget:
            break
        removed[name] += 1
        spent += costs[name]
    return {name: round_width(s.numel() - removed[name], s.numel(), round_to)
            for name, s in scores.items()}


def keep_indices(scores: torch.Tensor, width: int) -> list[int]:
    """The `width` highest-scoring channels, ascending; ties keep the lower index."""
    if not 1 <= width <= scores.numel():
        raise CompressError(f"cannot keep {width} of {scores.numel()} channels")
    return sorted(_descending(scores)[:width].tolist())


def normalised_by_block_mean(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """s / mean(s) per block, for criteria whose scale depends on the block's shape."""
    return {name: s / s.mean().clamp(min=torch.finfo(s.dtype).tiny)
            for name, s in scores.items()}


def _descending(scores: torch.Tensor) -> torch.Tensor:
    # stable: equal scores keep their index order, the lower index first
    return torch.sort(scores, descending=True, stable=True).indices
