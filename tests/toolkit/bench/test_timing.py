"""Latency statistics against numpy; the timing loops driven by a fake, deterministic clock."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.bench.timing import (
    TimingStats,
    first_call_seconds,
    measure,
    measure_interleaved,
    percentile,
)


class FakeClock:
    """A clock that only moves when a fake model runs: each run advances it by its step.

    Steps are powers of two so sums are exact in floating point and counts are exact."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def runner(self, step: float, log: list[str] | None = None, name: str = ""):
        def run_once() -> None:
            self.now += step
            self.calls += 1
            if log is not None:
                log.append(name)

        return run_once


def series(n: int, seed: int) -> list[float]:
    """Lognormal latencies around 5 ms with a long right tail, like a real benchmark."""
    return list(np.random.default_rng(seed).lognormal(mean=np.log(5e-3), sigma=0.4, size=n))


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (2, 1), (7, 2), (10, 3), (101, 4), (1000, 5)])
def test_timing_stats_match_numpy(n, seed):
    seconds = series(n, seed)
    ms = np.asarray(seconds) * 1000.0
    stats = TimingStats.from_seconds(seconds)
    assert stats.count == n
    assert stats.mean_ms == pytest.approx(ms.mean(), rel=1e-12)
    assert stats.std_ms == pytest.approx(ms.std(ddof=1) if n > 1 else 0.0, rel=1e-9, abs=1e-12)
    assert stats.min_ms == ms.min() and stats.max_ms == ms.max()
    for q, field in ((50, "p50_ms"), (90, "p90_ms"), (99, "p99_ms")):
        assert getattr(stats, field) == pytest.approx(np.percentile(ms, q), rel=1e-12)
    assert stats.total_seconds == pytest.approx(sum(seconds), rel=1e-12)


def test_percentile_interpolates_between_ranks():
    # Even count: the median lies halfway between the two middle values; 90th at rank 2.7.
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 90) == pytest.approx(3.7)
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    values = series(37, 9)
    for q in (0, 1, 25, 33.3, 75, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)


def test_to_dict_holds_every_field():
    stats = TimingStats.from_seconds([0.001, 0.003])
    d = stats.to_dict()
    assert d["count"] == 2
    assert d["p50_ms"] == pytest.approx(2.0) and d["mean_ms"] == pytest.approx(2.0)
    assert d["std_ms"] == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert TimingStats(**d) == stats


def test_empty_series_is_a_clear_error():
    with pytest.raises(ValueError, match="empty latency series"):
        TimingStats.from_seconds([])
    with pytest.raises(ValueError, match="empty series"):
        percentile([], 50)


def test_measure_excludes_warmup():
    clock = FakeClock()
    slow_warmup = clock.runner(8.0)  # a first call that compiles kernels: very slow
    fast = clock.runner(0.25)
    calls = {"n": 0}

    def run_once() -> None:
        calls["n"] += 1
        (slow_warmup if calls["n"] <= 3 else fast)()

    samples = measure(run_once, warmup=3, min_runs=5, min_seconds=0.0, clock=clock)
    assert samples == [0.25] * 5
    assert calls["n"] == 8


def test_measure_honours_min_runs_when_min_seconds_is_tiny():
    clock = FakeClock()
    samples = measure(clock.runner(0.5), warmup=0, min_runs=12, min_seconds=1e-9, clock=clock)
    assert len(samples) == 12 and clock.calls == 12


def test_measure_honours_min_seconds_when_min_runs_is_one():
    clock = FakeClock()
    samples = measure(clock.runner(0.125), warmup=2, min_runs=1, min_seconds=1.0, clock=clock)
    assert len(samples) == 8 and sum(samples) == 1.0
    assert clock.calls == 10


def test_measure_stops_at_max_runs():
    clock = FakeClock()
    samples = measure(clock.runner(0.125), warmup=0, min_runs=50, min_seconds=100.0,
                      max_runs=6, clock=clock)
    assert len(samples) == 6


def test_first_call_seconds_times_one_call():
    clock = FakeClock()
    assert first_call_seconds(clock.runner(0.375), clock=clock) == 0.375
    assert clock.calls == 1


def interleaved(seed: int, rounds: int = 20) -> list[str]:
    clock, log = FakeClock(), []
    runners = {name: clock.runner(0.125, log, name) for name in ("a", "b", "c", "d")}
    measure_interleaved(runners, warmup=0, min_runs=rounds, min_seconds=0.0, max_runs=rounds,
                        seed=seed, clock=clock)
    return log


def test_interleaved_gives_every_runner_the_same_number_of_runs():
    clock = FakeClock()
    runners = {"fast": clock.runner(0.125), "slow": clock.runner(0.375)}
    samples = measure_interleaved(runners, warmup=2, min_runs=3, min_seconds=3.0, clock=clock)
    # The slowest runner decides: 8 rounds x 0.375 s = 3.0 s; the fast one only has 1.0 s.
    assert {name: len(s) for name, s in samples.items()} == {"fast": 8, "slow": 8}
    assert clock.calls == 2 * 2 + 2 * 8


def test_interleaved_order_is_shuffled_per_round_and_reproducible():
    log = interleaved(seed=0)
    rounds = [tuple(log[i:i + 4]) for i in range(0, len(log), 4)]
    assert len(rounds) == 20 and all(sorted(r) == ["a", "b", "c", "d"] for r in rounds)
    assert len(set(rounds)) > 5  # 24 orders possible; a fixed order would give 1
    assert interleaved(seed=0) == log
    assert interleaved(seed=1) != log


def test_interleaved_ratio_of_p50s_follows_the_speed():
    clock = FakeClock()
    runners = {"base": clock.runner(0.125), "big": clock.runner(0.375)}
    samples = measure_interleaved(runners, warmup=1, min_runs=9, min_seconds=0.0, clock=clock)
    base, big = (TimingStats.from_seconds(samples[k]) for k in ("base", "big"))
    assert big.p50_ms / base.p50_ms == pytest.approx(3.0, rel=1e-12)
    assert base.p50_ms == pytest.approx(125.0)


def test_interleaved_stops_at_max_runs_rounds():
    clock = FakeClock()
    runners = {"a": clock.runner(0.125), "b": clock.runner(0.25)}
    samples = measure_interleaved(runners, warmup=0, min_runs=100, min_seconds=1e6, max_runs=4,
                                  clock=clock)
    assert [len(s) for s in samples.values()] == [4, 4]


@pytest.mark.parametrize(("kwargs", "argument"), [
    ({"warmup": -1, "min_runs": 1, "min_seconds": 0.0}, "warmup"),
    ({"warmup": 0, "min_runs": 0, "min_seconds": 0.0}, "min_runs"),
    ({"warmup": 0, "min_runs": 1, "min_seconds": -0.5}, "min_seconds"),
    ({"warmup": 0, "min_runs": 1, "min_seconds": float("nan")}, "min_seconds"),
    ({"warmup": 0, "min_runs": 1, "min_seconds": 0.0, "max_runs": 0}, "max_runs"),
])
def test_bad_arguments_name_the_argument(kwargs, argument):
    clock = FakeClock()
    with pytest.raises(ValueError, match=argument):
        measure_interleaved({"a": clock.runner(0.125)}, clock=clock, **kwargs)
    with pytest.raises(ValueError, match=argument):
        measure(clock.runner(0.125), clock=clock, **kwargs)
    assert clock.calls == 0


def test_interleaved_needs_a_runner():
    with pytest.raises(ValueError, match="no runners"):
        measure_interleaved({}, warmup=0, min_runs=1, min_seconds=0.0)
