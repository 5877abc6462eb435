"""1-D k-means over many independent groups at once: the lookup tables of palettization.

    minimize over c [k], a(i) in [0, k):   sum_i w_i (v_i - c_a(i))^2      (per group)

solved with Lloyd's iterations (assign each value to its nearest centroid, move each
centroid to the weighted mean of its values), as used for the palettized weights of
Apple's on-device model (arXiv 2407.21075); the per-value weights w are the "sensitive
k-means" of SqueezeLLM (arXiv 2306.07629) and coremltools. Pure functions over tensors.

In 1-D the nearest of sorted centroids is found by binary search over the midpoints
between neighbours, so memory stays O(n) per group even for k = 256.
"""

from __future__ import annotations

import torch


def nearest_centroid(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index [G, n] of the nearest centroid for each value; `centroids` [G, k] sorted."""
    midpoints = (centroids[:, 1:] + centroids[:, :-1]) / 2
    return torch.searchsorted(midpoints.contiguous(), values.contiguous())


def kmeans_1d(values: torch.Tensor, k: int, iters: int,
              weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each row of `values` [G, n] into `k` values: (centroids [G, k] fp16 sorted,
    assignment [G, n] int64) with `centroids.gather(1, assignment)` the nearest fp16 value.

    Starts from quantiles (deterministic, see `_quantile_init`); optional `weights`
    [G, n] >= 0 weight each value's squared error. A row holding exact zeros (a pruned
    matrix) keeps one centroid pinned at 0.0, so its zeros dequantize to exactly zero; the
    other k - 1 start on the non-zero values. Non-zero values near 0 may join the pinned
    centroid: nearest-centroid assignment is what minimizes their error."""
    values = values.float()
    weights = torch.ones_like(values) if weights is None else weights.float().expand_as(values)
    centroids, pinned = _quantile_init(values, weights, k)
    centroids, pinned = _lloyd(values, weights, centroids, pinned, iters)
    for _ in range(k if k > 1 else 0):
        swapped = _swap_for_worst_value(values, weights, centroids, pinned)
        if swapped is None:
            break
        centroids, pinned = _lloyd(values, weights, *swapped, iters)
    # The file stores fp16 tables: round first, then assign to the stored values, so that
    # dequantizing the stored form gives exactly the weights calibration continues with.
    table = centroids.to(torch.float16).sort(dim=1).values
    return table, nearest_centroid(values, table.float())


def _lloyd(values: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor,
           pinned: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `iters` Lloyd iterations from sorted `centroids` [G, k]; stops once stable."""
    weighted_values = weights * values
    for _ in range(iters):
        assignment = nearest_centroid(values, centroids)
        sums = torch.zeros_like(centroids).scatter_add_(1, assignment, weighted_values)
        mass = torch.zeros_like(centroids).scatter_add_(1, assignment, weights)
        moved = torch.where(mass > 0, sums / mass.clamp_min(torch.finfo(mass.dtype).tiny),
                            centroids)
        empty = (mass <= 0) & ~pinned
        if bool(empty.any()):
            moved = _reseed_empty(values, weights, centroids, assignment, moved, empty)
        moved = moved.masked_fill(pinned, 0.0)
        moved, order = moved.sort(dim=1)
        pinned = pinned.gather(1, order)
        converged = torch.equal(moved, centroids)
        centroids = moved
        if converged:
            break
    return centroids, pinned


def _swap_for_worst_value(values: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor,
                          pinned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One swap step past Lloyd's local minimum: in each row where it lowers the error, move
    the centroid that is cheapest to remove onto the worst-represented value.

    Lloyd never moves a centroid out of the bulk to an isolated value, so from a quantile
    start a lone outlier (LLMs' "super weights", arXiv 2411.07191) is clipped to the edge of
    the bulk; on SmolLM2 such clipped weights made 3-bit tables with a lower mean error
    than RTN's destroy the model. Removing centroid c sends its members to the nearer of
    its neighbours, costing  sum_{i in c} w_i (min_{c' = c +- 1} (v_i - c')^2 - (v_i - c)^2);
    a centroid on the worst value v* gains at least  sum_i w_i max(0, (v_i - c_a(i))^2 -
    (v_i - v*)^2)  (every value that is nearer to it moves there; a pair of outliers shares
    it). A swap is made only where that gain exceeds the cost, so the error strictly
    falls. Returns the new (centroids, pinned), or None when no row improves."""
    k = centroids.shape[1]
    assignment = nearest_centroid(values, centroids)
    error = weights * (values - centroids.gather(1, assignment)).square()
    worst = error.argmax(dim=1)
    inf = torch.tensor(float("inf"), device=values.device)
    left = torch.where(assignment > 0, (values - centroids.gather(
        1, (assignment - 1).clamp_min(0))).square(), inf)
    right = torch.where(assignment < k - 1, (values - centroids.gather(
        1, (assignment + 1).clamp_max(k - 1))).square(), inf)
    moved_error = weights * torch.minimum(left, right)  # k >= 2: one side always exists
    cost = torch.zeros_like(centroids).scatter_add_(1, assignment, moved_error - error)
    cost = cost.masked_fill(pinned, float("inf"))
    cheapest_cost, cheapest = cost.min(dim=1)
    worst_value = values.gather(1, worst.unsqueeze(1))
    gain = (error - weights * (values - worst_value).square()).clamp_min(0).sum(dim=1)
    swap = gain > cheapest_cost + 1e-6 * gain  # the margin absorbs rounding
    if not bool(swap.any()):
        return None
    rows = swap.nonzero().squeeze(1)
    centroids = centroids.clone()
    centroids[rows, cheapest[rows]] = values[rows, worst[rows]]
    centroids, order = centroids.sort(dim=1)
    return centroids, pinned.gather(1, order)


def _quantile_init(values: torch.Tensor, weights: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids [G, k] at the (i + 1/2)/k quantiles of (w p)^(1/3), the density of the
    MSE-optimal quantizer at high resolution (Panter & Dite 1951), estimated with a
    histogram of each row's non-zero values; plus a mask [G, k] of the centroid pinned at
    0 in rows that hold exact zeros. Plain quantiles of p crowd the centre and leave
    Lloyd dozens of iterations of work at 4 bits and more."""
    n_groups, _ = values.shape
    n_bins = max(min(8 * k, values.shape[1] // 64), k)
    is_zero = values == 0
    has_zero = is_zero.any(dim=1, keepdim=True)  # [G, 1]
    inf = torch.tensor(float("inf"), device=values.device)
    low = torch.where(is_zero, inf, values).amin(dim=1, keepdim=True)
    high = torch.where(is_zero, -inf, values).amax(dim=1, keepdim=True)
    all_zero = ~(~is_zero).any(dim=1, keepdim=True)
    low, high = low.masked_fill(all_zero, 0.0), high.masked_fill(all_zero, 0.0)
    width = ((high - low) / n_bins).clamp_min(torch.finfo(values.dtype).tiny)
    bins = ((values - low) / width).long().clamp(0, n_bins - 1)
    mass = weights.masked_fill(is_zero, 0.0)
    # Rows whose weights are all zero (dead inputs) fall back to counting values.
    mass = torch.where(mass.sum(dim=1, keepdim=True) > 0, mass, (~is_zero).float())
    hist = torch.zeros(n_groups, n_bins, device=values.device).scatter_add_(1, bins, mass)
    cdf = hist.pow(1 / 3).cumsum(dim=1)
    cdf = cdf / cdf[:, -1:].clamp_min(torch.finfo(cdf.dtype).tiny)
    free = k - has_zero.long()  # centroids left for the non-zero values
    slot = torch.arange(k, device=values.device).expand(n_groups, k)
    quantile = ((slot + 0.5) / free).clamp(max=1.0)
    index = torch.searchsorted(cdf, quantile).clamp(max=n_bins - 1)
    below = torch.where(index > 0, cdf.gather(1, (index - 1).clamp_min(0)), 0.0)
    within = (quantile - below) / (cdf.gather(1, index) - below).clamp_min(1e-12)
    centroids = low + (index + within.clamp(0.0, 1.0)) * width
    pinned = has_zero & (slot == k - 1)
    centroids = centroids.masked_fill(pinned | all_zero, 0.0)
    centroids, order = centroids.sort(dim=1)
    return centroids, pinned.gather(1, order)


def _reseed_empty(values: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor,
                  assignment: torch.Tensor, moved: torch.Tensor,
                  empty: torch.Tensor) -> torch.Tensor:
    """Move each empty centroid onto one of its row's worst-represented values (largest
    weighted error), the j-th empty centroid of a row onto the j-th worst value: an
    unused table entry is wasted storage, a re-seeded one can still take a cluster."""
    error = weights * (values - centroids.gather(1, assignment)).square()
    n_empty = int(empty.sum(dim=1).max())
    worst = error.topk(min(n_empty, values.shape[1]), dim=1).indices  # [G, m]
    rank = (empty.cumsum(dim=1) - 1).clamp(0, worst.shape[1] - 1)  # j-th empty of its row
    seeds = values.gather(1, worst.gather(1, rank))
    return torch.where(empty, seeds, moved)
