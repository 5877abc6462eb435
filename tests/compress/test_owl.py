"""OWL: mean sparsity kept, bounds, more outliers -> lower sparsity, outlier ratio by count."""

from __future__ import annotations

import pytest
import torch

from compress.prune.owl import outlier_ratio, owl_block_sparsities


def test_outlier_ratio_against_direct_count() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = [torch.rand(8, 16, generator=gen) ** 4, torch.rand(4, 16, generator=gen) * 3.0]
    values = [v for s in scores for v in s.flatten().tolist()]
    mean = sum(values) / len(values)  # one mean over the whole block, not per tensor
    expected = sum(v > 2.0 * mean for v in values) / len(values)
    assert outlier_ratio(scores, 2.0) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0


def test_outlier_ratio_small_example() -> None:
    # mean = (1 * 9 + 100) / 10 = 10.9; only 100 > 5 * 10.9
    scores = [torch.ones(3, 3), torch.tensor([[100.0]])]
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.1)
    assert outlier_ratio([torch.ones(4, 4)], 5.0) == 0.0


def _reference(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """The official OWL formula, written out: min-max to [0, 2 lam], shift to 1 - S."""
    low, high = min(ratios), max(ratios)
    norm = [(r - low) * 2 * lam / (high - low) for r in ratios]
    density = [v - sum(norm) / len(norm) + 1 - sparsity for v in norm]
    return [1 - d for d in density]


@pytest.mark.parametrize(
    "ratios",
    [[0.01, 0.03, 0.02, 0.04], [0.5, 0.1, 0.3, 0.2, 0.4, 0.0], [0.0, 0.0, 0.0, 1.0],
     [0.02, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2], [0.3, 0.1]],
)
@pytest.mark.parametrize("sparsity,lam", [(0.5, 0.08), (0.7, 0.08), (0.37, 0.2)])
def test_mean_bounds_order(ratios: list[float], sparsity: float, lam: float) -> None:
    got = owl_block_sparsities(ratios, sparsity, lam)
    assert len(got) == len(ratios)
    assert sum(got) / len(got) == pytest.approx(sparsity, abs=1e-12)
    assert all(sparsity - lam - 1e-12 <= s <= sparsity + lam + 1e-12 for s in got)
    for i in range(len(ratios)):
        for j in range(len(ratios)):
            if ratios[i] > ratios[j]:
                assert got[i] < got[j]  # more outliers -> pruned less
    ref = _reference(ratios, sparsity, lam)
    if max(abs(r - sparsity) for r in ref) <= lam:
        assert got == pytest.approx(ref, abs=1e-12)  # the official formula, untouched
    else:
        # shrunk to the documented bound: the extreme block sits exactly at S +- lam
        assert max(abs(s - sparsity) for s in got) == pytest.approx(lam, abs=1e-12)
        scale = [(g - sparsity) / (r - sparsity) for g, r in zip(got, ref, strict=True)
                 if abs(r - sparsity) > 1e-9]
        assert max(scale) - min(scale) < 1e-9  # one common factor


def test_spread_is_two_lambda_when_balanced() -> None:
    got = owl_block_sparsities([0.0, 0.25, 0.5, 0.75, 1.0], 0.6, 0.05)
    assert got == pytest.approx([0.65, 0.625, 0.6, 0.575, 0.55], abs=1e-12)


def test_equal_ratios_give_uniform() -> None:
    assert owl_block_sparsities([0.02] * 5, 0.5, 0.08) == [0.5] * 5
    assert owl_block_sparsities([0.3], 0.7, 0.08) == [0.7]
