"""OWL: block sparsity S_l = S - (norm(D_l) - mean(norm(D))), D_l = outlier ratio of block l.

OWL, outlier-weighed layerwise sparsity (Yin et al., arXiv 2310.05175): a weight is an
outlier when its Wanda score |W_ij| * ||X_j|| exceeds M times the mean score of its
decoder block; D_l is the fraction of such weights. Blocks with more outliers are pruned
less, the mean sparsity stays S and the spread is set by lambda. The engine computes the
ratios (one per block) and calls these pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """D = #{scores > m * mean(scores)} / #scores over all tensors of one block, flattened.

    The mean is taken over every entry of every tensor together (the official OWL code
    concatenates the block's Wanda scores); computed from per-tensor sums so a block's
    scores are never copied into one large tensor.
    """
    if not scores:
        raise ValueError("outlier_ratio needs the score tensors of at least one layer")
    if m <= 0:
        raise ValueError(f"outlier threshold m {m} must be > 0")
    total = sum(s.numel() for s in scores)
    if total == 0:
        raise ValueError("outlier_ratio got only empty score tensors")
    # float64 sums: a block of a 3B model has ~10^8 scores.
    mean = sum(s.detach().to(torch.float64).sum().item() for s in scores) / total
    threshold = m * mean
    outliers = sum(int((s.detach().to(torch.float64) > threshold).sum().item()) for s in scores)
    return outliers / total


def owl_block_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """S_l = 1 - density_l, density_l = norm_l - mean(norm) + (1 - S), norm in [0, 2 lam].

    `norm` min-max normalises the outlier ratios to [0, 2 * lam] (as the official OWL
    code does), so more outliers -> higher density -> lower sparsity, and the mean of the
    result is exactly `sparsity`.

    Deliberate addition: that formula alone can move a block by up to 2 * lam * (1 - 1/n)
    from S (e.g. one outlier-heavy block among many), while the paper states
    S_l in [S - lam, S + lam] and `PruneConfig` only checks that range stays in (0, 1).
    When some |S_l - S| exceeds lam, all deviations are scaled down by the same factor so
    the largest is exactly lam: the mean, the order and the relative spacing are kept.
    """
    n = len(ratios)
    if n == 0:
        raise ValueError("owl_block_sparsities needs at least one block ratio")
    if lam < 0:
        raise ValueError(f"owl lambda {lam} must be >= 0")
    low, high = min(ratios), max(ratios)
    if high == low or lam == 0:
        return [float(sparsity)] * n
    norm = [(r - low) / (high - low) * 2.0 * lam for r in ratios]
    mean_norm = sum(norm) / n
    deviations = [v - mean_norm for v in norm]  # density_l - (1 - S)
    largest = max(abs(v) for v in deviations)
    if largest > lam:
        deviations = [v * (lam / largest) for v in deviations]
    return [float(sparsity) - v for v in deviations]
