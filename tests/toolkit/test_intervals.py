"""Wilson intervals against an independent computation; the perplexity bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toolkit.eval.intervals import Z_95, bootstrap_ppl_interval, wilson_interval
from toolkit.eval.perplexity import perplexity


def wilson_by_quadratic(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson interval as the set of p with (k/n - p)^2 <= z^2 p (1 - p) / n: the
    roots of (1 + z^2/n) p^2 - (2 k/n + z^2/n) p + (k/n)^2 = 0."""
    phat, c = k / n, z * z / n
    a, b, cc = 1 + c, -(2 * phat + c), phat * phat
    root = math.sqrt(b * b - 4 * a * cc)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (9, 10), (10, 10),
                                      (19, 24), (81, 263), (1, 1000), (150, 213)])
def test_wilson_matches_the_quadratic_roots(k, n):
    low, high = wilson_interval(k, n)
    expected = wilson_by_quadratic(k, n)
    assert low == pytest.approx(expected[0], abs=1e-12)
    assert high == pytest.approx(expected[1], abs=1e-12)
    assert 0 <= low <= k / n <= high <= 1


def test_wilson_closed_forms_at_the_edges():
    z2 = Z_95 * Z_95
    for n in (1, 8, 100):
        assert wilson_interval(0, n) == pytest.approx((0.0, z2 / (n + z2)), abs=1e-12)
        assert wilson_interval(n, n) == pytest.approx((n / (n + z2), 1.0), abs=1e-12)
    low, high = wilson_interval(5, 10)  # symmetric around 0.5
    assert (low + high) / 2 == pytest.approx(0.5, abs=1e-12)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # textbook value


def test_wilson_rejects_impossible_counts_and_handles_no_trials():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for k, n in ((3, 2), (-1, 5)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_wilson_narrows_with_more_trials():
    widths = [wilson_interval(n // 2, n)[1] - wilson_interval(n // 2, n)[0]
              for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_is_deterministic_and_contains_the_point_estimate():
    nll = np.random.default_rng(7).normal(3.0, 0.3, size=16).tolist()
    point = math.exp(sum(nll) / len(nll))
    first = bootstrap_ppl_interval(nll, seed=0)
    assert first == bootstrap_ppl_interval(nll, seed=0)
    assert first != bootstrap_ppl_interval(nll, seed=1)
    assert first[0] < point < first[1]
    # More spread between windows, a wider interval.
    wide = bootstrap_ppl_interval([3.0 + 3 * (x - 3.0) for x in nll], seed=0)
    assert wide[1] - wide[0] > first[1] - first[0]


def test_bootstrap_of_identical_windows_is_the_point():
    low, high = bootstrap_ppl_interval([2.0] * 5)
    assert low == pytest.approx(math.exp(2.0)) and high == pytest.approx(math.exp(2.0))
    with pytest.raises(ValueError):
        bootstrap_ppl_interval([])


class _UniformLM(torch.nn.Module):
    """Logits that depend on the token only, so each window's NLL is known."""

    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator()
                                                    .manual_seed(0)))

    def forward(self, input_ids, use_cache=False):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_perplexity_keeps_one_nll_per_window():
    windows = torch.randint(0, 11, (5, 9), generator=torch.Generator().manual_seed(1))
    result = perplexity(_UniformLM(), windows, batch_size=2)
    assert len(result.window_nll) == 5
    assert sum(result.window_nll) / 5 == pytest.approx(result.mean_nll, rel=1e-12)
    log_probs = torch.log_softmax(_UniformLM().table.detach().double(), dim=-1)
    for k in range(5):
        expected = -sum(float(log_probs[windows[k, t], windows[k, t + 1]])
                        for t in range(8)) / 8
        assert result.window_nll[k] == pytest.approx(expected, rel=1e-6)
    # The manifest's fields are unchanged: window_nll only on request.
    assert "window_nll" not in result.to_dict()
    assert result.to_dict(include_windows=True)["window_nll"] == result.window_nll
