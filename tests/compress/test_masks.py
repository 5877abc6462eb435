"""Masks: exact counts per row and per N:M group, lowest pruned; magnitude keeps the largest."""

from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.prune.magnitude import MagnitudeConfig
from compress.prune.magnitude import prune_weight as magnitude_prune
from compress.prune.masks import n_m_mask, prune_mask, row_lowest_k_mask, unstructured_row_mask
from compress.stats import LinearStats


def _reference_row_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Loop version: per row, prune the k smallest scores (ties by column index)."""
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    for r in range(scores.shape[0]):
        row = scores[r].tolist()
        for j in sorted(range(len(row)), key=lambda c: (row[c], c))[:k]:
            mask[r, j] = True
    return mask


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.37, 0.5, 0.63, 0.9])
@pytest.mark.parametrize("cols", [16, 27, 100])
def test_unstructured_exact_count_per_row(sparsity: float, cols: int) -> None:
    scores = torch.rand(9, cols, generator=torch.Generator().manual_seed(cols))
    mask = unstructured_row_mask(scores, sparsity)
    assert mask.dtype == torch.bool
    assert (mask.sum(dim=1) == round(sparsity * cols)).all()
    assert torch.equal(mask, _reference_row_mask(scores, round(sparsity * cols)))


def test_unstructured_prunes_lowest_with_deterministic_ties() -> None:
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0, 2.0, 0.5]])
    mask = unstructured_row_mask(scores, 0.5)  # 3 pruned: 0.5, then the first two 1.0
    assert mask.tolist() == [[False, True, True, False, False, True]]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_n_m_exact_zeros_per_group(n: int, m: int) -> None:
    scores = torch.randn(7, 8 * m, generator=torch.Generator().manual_seed(m + n))
    mask = n_m_mask(scores, n, m)
    groups = mask.reshape(7, 8, m)
    assert (groups.sum(dim=2) == n).all()
    # independent loop: the n lowest of every group
    for r in range(7):
        for g in range(8):
            block = scores[r, g * m:(g + 1) * m]
            lowest = set(torch.argsort(block)[:n].tolist())
            assert {j for j in range(m) if groups[r, g, j]} == lowest


def test_n_m_rejects_width_not_multiple_of_m() -> None:
    with pytest.raises(CompressError) as err:
        n_m_mask(torch.rand(3, 10), 2, 4, name="model.layers.0.mlp.down_proj")
    message = str(err.value)
    assert "10" in message and "--ignore" in message and "down_proj" in message


def test_prune_mask_dispatch() -> None:
    scores = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prune_mask(scores, 0.5, (2, 4)), n_m_mask(scores, 2, 4))
    assert torch.equal(prune_mask(scores, 0.3, None), unstructured_row_mask(scores, 0.3))
    assert not row_lowest_k_mask(scores, 0).any()
    assert row_lowest_k_mask(scores, 16).all()


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_magnitude_keeps_the_largest(nm: tuple[int, int] | None) -> None:
    weight = torch.randn(6, 32, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    stats = LinearStats.empty(32, frozenset(), torch.device("cpu"))
    pruned = magnitude_prune(weight, stats, 0.5, nm, MagnitudeConfig())
    assert pruned.dtype == torch.float32 and pruned is not weight
    w = weight.float()
    kept = pruned != 0
    assert torch.equal(pruned[kept], w[kept])  # kept weights are untouched
    width = 32 if nm is None else 4
    for r in range(6):
        for g in range(32 // width):
            part = w[r, g * width:(g + 1) * width].abs()
            keep = kept[r, g * width:(g + 1) * width]
            assert keep.sum() == width // 2
            assert part[keep].min() >= part[~keep].max()
