"""95 % confidence intervals for the scores of the knowledge suite.

Accuracy, Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it
over the normal interval for small n and p near 0 or 1): with p = k / n,

    center    = (p + z^2 / (2n)) / (1 + z^2 / n)
    halfwidth = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

Perplexity, percentile bootstrap over evaluation windows (Efron 1979): windows are drawn
with replacement B times, each draw gives exp(mean of its windows' mean NLL) (every
window predicts the same number of tokens), and the interval is the draws' 2.5th and
97.5th percentiles. The generator is seeded, so the interval is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `trials`; (0, 1) when trials == 0."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2n = z * z / trials
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    # At k = 0 and k = n a bound is exactly 0 or 1; say so instead of rounding near it.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == trials else min(1.0, center + half)
    return low, high


def bootstrap_ppl_interval(window_nll: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES,
                           seed: int = BOOTSTRAP_SEED, level: float = 0.95,
                           ) -> tuple[float, float]:
    """Percentile-bootstrap interval of exp(mean(window_nll)) over resampled windows."""
    nll = np.asarray(window_nll, dtype=np.float64)
    if nll.ndim != 1 or nll.size == 0:
        raise ValueError("bootstrap needs at least one window NLL")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, nll.size, size=(samples, nll.size))
    ppl = np.exp(nll[draws].mean(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ppl, [tail, 100 - tail])
    return float(low), float(high)
