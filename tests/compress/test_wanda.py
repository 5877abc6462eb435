"""Wanda: scores and masks against a direct loop over |W_ij| * ||X_j||_2 from raw activations."""

from __future__ import annotations

import math

import pytest
import torch

from compress.prune.wanda import WandaConfig, prune_weight, wanda_scores
from compress.stats import SQ_NORM, LinearStats

OUT, IN, TOKENS = 8, 24, 50


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, LinearStats]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(OUT, IN, generator=gen)
    # activations [batch, seq, in] with per-feature scales, so ||X_j|| differs a lot
    x = torch.randn(2, TOKENS // 2, IN, generator=gen) * torch.logspace(-1, 1, IN)
    stats = LinearStats.empty(IN, frozenset({SQ_NORM}), torch.device("cpu"))
    stats.add(x[0])
    stats.add(x[1])  # accumulated over two batches, as the engine does
    return weight, x.reshape(-1, IN), stats


def _reference_scores(weight: torch.Tensor, x: torch.Tensor) -> list[list[float]]:
    rows, cols = weight.shape
    norms = [math.sqrt(sum(float(x[t, j]) ** 2 for t in range(x.shape[0]))) for j in range(cols)]
    return [[abs(float(weight[i, j])) * norms[j] for j in range(cols)] for i in range(rows)]


def _lowest(values: list[float], k: int) -> set[int]:
    return set(sorted(range(len(values)), key=lambda j: values[j])[:k])


def test_scores_match_loop() -> None:
    weight, x, stats = _data()
    scores = wanda_scores(weight, stats.input_norm())
    torch.testing.assert_close(scores, torch.tensor(_reference_scores(weight, x)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparsity", [0.25, 0.37, 0.5, 0.7])
def test_unstructured_mask_matches_loop(sparsity: float) -> None:
    weight, x, stats = _data(1)
    pruned = prune_weight(weight, stats, sparsity, None, WandaConfig(sparsity=sparsity))
    ref = _reference_scores(weight, x)
    k = round(sparsity * IN)
    for i in range(OUT):
        zeros = {j for j in range(IN) if pruned[i, j] == 0}
        assert zeros == _lowest(ref[i], k)
    kept = pruned != 0
    assert torch.equal(pruned[kept], weight[kept])  # no weight update in Wanda


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_n_m_mask_matches_loop(n: int, m: int) -> None:
    weight, x, stats = _data(2)
    pruned = prune_weight(weight, stats, n / m, (n, m), WandaConfig(pattern=f"{n}:{m}"))
    ref = _reference_scores(weight, x)
    for i in range(OUT):
        for g in range(0, IN, m):
            zeros = {j for j in range(g, g + m) if pruned[i, j] == 0}
            assert zeros == {g + j for j in _lowest(ref[i][g:g + m], n)}


def test_wanda_differs_from_magnitude_on_outlier_features() -> None:
    # A small weight on a huge-activation feature must survive Wanda.
    weight = torch.tensor([[0.1, 1.0, 1.0, 1.0]])
    stats = LinearStats.empty(4, frozenset({SQ_NORM}), torch.device("cpu"))
    stats.add(torch.tensor([[100.0, 1.0, 1.0, 1.0]]))
    pruned = prune_weight(weight, stats, 0.5, None, WandaConfig())
    assert pruned[0, 0] == 0.1 and (pruned == 0).sum() == 2
