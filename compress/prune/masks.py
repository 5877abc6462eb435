"""Pruning masks from per-weight scores: True means the weight is PRUNED (set to zero).

Every method in `compress.prune` reduces to "score each weight, then zero the lowest":
unstructured sparsity compares the weights of one output row (Wanda, arXiv 2306.11695,
found per-row comparison better than per-layer for LLMs), and N:M sparsity compares the
M consecutive input weights of one row group (the pattern sparse tensor cores run).
Ties are broken by column index (stable sort), so a mask never depends on the device.
"""

from __future__ import annotations

import torch

from compress.errors import CompressError


def row_lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """mask[r, j] = j is among the k lowest scores[r, :] (ties: lower column index first)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [out, in], got shape {tuple(scores.shape)}")
    cols = scores.shape[1]
    if not 0 <= k <= cols:
        raise ValueError(f"cannot prune {k} of {cols} entries per row")
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k == 0:
        return mask
    # A stable sort (not topk) so that equal scores always lose in column order.
    order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
    return mask.scatter_(1, order, True)


def unstructured_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the round(sparsity * in) lowest-score entries of every output row.

    Per-row comparison as in Wanda (arXiv 2306.11695): every output neuron keeps the same
    number of inputs, so no row is pruned away entirely.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity {sparsity} is outside [0, 1]")
    return row_lowest_k_mask(scores, round(sparsity * scores.shape[-1]))


def check_n_m(in_features: int, n: int, m: int, name: str = "layer") -> None:
    """Raise a CompressError naming the fix when an N:M pattern cannot tile a layer."""
    if not 0 < n < m:
        raise CompressError(f"pattern {n}:{m} needs 0 < N < M: try 2:4 or 4:8")
    if in_features % m:
        raise CompressError(
            f"{name} has {in_features} input features, which the pattern {n}:{m} cannot "
            f"tile (needs a multiple of {m}): use a pattern whose M divides {in_features}, "
            f"or leave the layer dense with --ignore"
        )


def n_m_mask(scores: torch.Tensor, n: int, m: int, name: str = "layer") -> torch.Tensor:
    """In every group of m consecutive input columns of every row, prune the n lowest scores.

    N:M semi-structured sparsity (Mishra et al., arXiv 2104.08378; used by Wanda and
    SparseGPT): exactly n zeros per group, which 2:4 sparse tensor cores can skip.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [out, in], got shape {tuple(scores.shape)}")
    rows, cols = scores.shape
    check_n_m(cols, n, m, name)
    groups = scores.reshape(rows * (cols // m), m)
    return row_lowest_k_mask(groups, n).reshape(rows, cols)


def prune_mask(
    scores: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    name: str = "layer",
) -> torch.Tensor:
    """N:M mask when `nm` is (n, m), else the per-row unstructured mask at `sparsity`."""
    if nm is not None:
        return n_m_mask(scores, nm[0], nm[1], name)
    return unstructured_row_mask(scores, sparsity)
