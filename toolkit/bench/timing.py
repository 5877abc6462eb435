"""Latency measurement that does not depend on any runtime: a model is just `run_once()`.

The statistics follow what LiteRT's `benchmark_model`, `onnxruntime_perf_test` and MLPerf
Mobile report: warm-up runs are discarded, then runs are timed until both a minimum count
and a minimum duration are reached, and the series is summarised by mean, sample standard
deviation and the p50/p90/p99 percentiles (tail latency is what a user feels on a phone).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class TimingStats:
    """Summary of one series of per-run latencies; every `*_ms` field is in milliseconds."""

    count: int
    mean_ms: float
    std_ms: float  # sample standard deviation (ddof=1); 0.0 for a single run
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    total_seconds: float  # timed time only, warm-up excluded

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> TimingStats:
        """Summarise per-run latencies given in seconds."""
        if len(samples) == 0:
            raise ValueError("cannot summarise an empty latency series: time at least one run "
                             "(min_runs >= 1) before calling TimingStats.from_seconds")
        if not all(math.isfinite(s) for s in samples):
            raise ValueError("latency series holds a NaN or infinite value: check the clock "
                             "passed to measure()")
        ms = sorted(s * 1000.0 for s in samples)
        count = len(ms)
        mean = math.fsum(ms) / count
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in ms) / (count - 1)) if count > 1 else 0.0
        return cls(
            count=count, mean_ms=mean, std_ms=std, min_ms=ms[0], max_ms=ms[-1],
            p50_ms=_percentile_sorted(ms, 50.0), p90_ms=_percentile_sorted(ms, 90.0),
            p99_ms=_percentile_sorted(ms, 99.0), total_seconds=math.fsum(samples),
        )

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON reports (`--json`) and `render_html`."""
        return dataclasses.asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks.

    Same definition as numpy's default `method="linear"`: rank h = (n - 1) q / 100, and the
    value is interpolated between the sorted values at floor(h) and floor(h) + 1.
    """
    if len(values) == 0:
        raise ValueError("cannot take a percentile of an empty series: pass at least one value")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} is outside 0..100: pass e.g. 50 for the median")
    return _percentile_sorted(sorted(values), q)


def _percentile_sorted(ordered: Sequence[float], q: float) -> float:
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def first_call_seconds(run_once: Callable[[], object], clock: Clock = time.perf_counter) -> float:
    """Time exactly one call: the "first inference", which pays one-time costs (lazy
    allocation, kernel selection, delegate compilation) that warm-up hides later."""
    return _time_one(run_once, clock)


def measure(
    run_once: Callable[[], object],
    *,
    warmup: int,
    min_runs: int,
    min_seconds: float,
    max_runs: int | None = None,
    clock: Clock = time.perf_counter,
) -> list[float]:
    """Per-run seconds of `run_once`, after `warmup` untimed calls.

    Timing goes on until at least `min_runs` runs AND `min_seconds` of timed time are done:
    the count bounds the error of the percentiles, the duration averages over the clock
    frequency and thermal swings of a phone or a shared machine. `max_runs` caps the count.
    """
    _check_arguments(warmup, min_runs, min_seconds, max_runs)
    for _ in range(warmup):
        run_once()
    samples: list[float] = []
    total = 0.0
    while not _done(len(samples), total, min_runs, min_seconds, max_runs):
        sample = _time_one(run_once, clock)
        samples.append(sample)
        total += sample
    return samples


def measure_interleaved(
    runners: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    min_runs: int,
    min_seconds: float,
    max_runs: int | None = None,
    seed: int = 0,
    clock: Clock = time.perf_counter,
    self_timed: bool = False,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Per-run seconds of several models, timed in rounds that run each model once.

    With `self_timed`, each runner returns its own duration in seconds (a model running in
    a worker process times itself, so the pipe to it is not counted).

    The order within a round is shuffled by `random.Random(seed)`: a slow drift of a noisy
    shared machine (another job starting, the CPU heating up) then hits every model alike,
    so the ratios between models hold even when the absolute numbers wander. Timing stops
    once every model has `min_runs` runs and the slowest model has `min_seconds` of timed
    time (counting the fastest one instead would multiply the time spent on the slow ones),
    or after `max_runs` rounds. `on_round(rounds done, rounds expected)` follows progress;
    the expectation grows while `min_seconds` is not yet met.
    """
    _check_arguments(warmup, min_runs, min_seconds, max_runs)
    if not runners:
        raise ValueError("measure_interleaved got no runners: pass a mapping name -> run_once "
                         "with at least one model")
    for run_once in runners.values():
        for _ in range(warmup):
            run_once()
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    totals = dict.fromkeys(runners, 0.0)
    rounds = 0
    while not _done(rounds, max(totals.values()), min_runs, min_seconds, max_runs):
        order = list(runners)
        rng.shuffle(order)
        for name in order:
            sample = (float(runners[name]()) if self_timed
                      else _time_one(runners[name], clock))
            samples[name].append(sample)
            totals[name] += sample
        rounds += 1
        if on_round is not None:
            on_round(rounds, expected_rounds(rounds, max(totals.values()), min_runs,
                                             min_seconds, max_runs))
    return samples


def expected_rounds(rounds: int, seconds: float, min_runs: int, min_seconds: float,
                    max_runs: int | None) -> int:
    """Rounds the timing will take, extrapolated from `seconds` spent in `rounds`."""
    if _done(rounds, seconds, min_runs, min_seconds, max_runs):
        return rounds
    by_time = math.ceil(rounds * min_seconds / seconds) if seconds > 0 else rounds + 1
    expected = max(min_runs, by_time, rounds + 1)
    return min(expected, max_runs) if max_runs is not None else expected


def _time_one(run_once: Callable[[], object], clock: Clock) -> float:
    start = clock()
    run_once()
    return clock() - start


def _done(runs: int, seconds: float, min_runs: int, min_seconds: float,
          max_runs: int | None) -> bool:
    if max_runs is not None and runs >= max_runs:
        return True
    return runs >= min_runs and seconds >= min_seconds


def _check_arguments(warmup: int, min_runs: int, min_seconds: float,
                     max_runs: int | None) -> None:
    if warmup < 0:
        raise ValueError(f"warmup={warmup} is negative: pass 0 to skip warm-up runs")
    if min_runs < 1:
        raise ValueError(f"min_runs={min_runs} must be at least 1: a latency needs one timed run")
    if not min_seconds >= 0:  # also rejects NaN
        raise ValueError(f"min_seconds={min_seconds} must be >= 0: pass 0 to stop on min_runs")
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs={max_runs} must be at least 1, or None for no cap")
