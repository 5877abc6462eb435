"""This machine's memory read bandwidth, the ceiling on LLM decode speed.

    python -m benchmarks.memory_bandwidth [--threads 1 2] [--nbytes 1073741824 ...]
        [--repeats 7]

One decode step multiplies a single token's activations by every weight matrix once: a
matrix-vector product does 2 FLOPs per weight and reuses no weight, so for a model larger
than the caches the step time is bounded below by (bytes of weights read per token) /
(read bandwidth) ("roofline" reasoning, arXiv:2402.16363; the same bound is why
weight-only quantization speeds decode up, arXiv:2306.00978). The probe here streams a
float32 buffer once per sweep with `torch.sum`: each byte is read once, in order, with one
add per 4 bytes, the same access pattern and arithmetic intensity (or lower) as the
matrix-vector products, so its time is the memory system's, not the ALUs'. Writing is not
timed: decode reads weights and writes only a few KB of activations and KV entries.

The buffer is filled with ones before timing so every page is backed by its own memory (a
fresh `torch.zeros` may map every page to the kernel's single zero page, which then sits in
cache and reads at cache speed). Repeated sweeps of a buffer that fits in the caches measure
the caches, and so do a small model's decode steps, which re-read the same weights every
token. On the 2-core VM this was written on (idle, 1 / 2 threads): 1 GiB read at 12.4 / 24.5
GB/s, 256 MiB at 12.8 / 24.1, but 94 MiB (the SmolLM2-135M Q4_1 GGUF's size) at 22.8 / 47.7
and 64 MiB at 25.0 / 48.7. So call `read_bandwidth` twice: the default 1 GiB for the DRAM
bound, and `nbytes` = the file's size for the bound at that working set. The result carries
the largest cache size sysfs lists, but in a VM that is the host's shared L3 (480 MiB here),
so it is only a hint. On a shared machine other processes' work lowers the numbers (2
threads read at 12.8 GB/s, not 24.5, while another process kept a core busy): the result
carries the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

GB = 1e9


def summarize(gb_per_s: Sequence[float]) -> dict:
    """Median and min-max spread of per-sweep bandwidths: the median because a shared
    machine's other tenants slow single sweeps down (never speed them up)."""
    if not gb_per_s:
        raise ValueError("no bandwidth samples: repeats must be at least 1")
    return {"gb_per_s": statistics.median(gb_per_s), "min_gb_per_s": min(gb_per_s),
            "max_gb_per_s": max(gb_per_s), "samples_gb_per_s": list(gb_per_s)}


def time_sweeps(sweep: Callable[[], object], nbytes: int, repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """GB/s of each of `repeats` calls of `sweep`, each reading `nbytes` bytes."""
    rates = []
    for _ in range(repeats):
        start = clock()
        sweep()
        seconds = clock() - start
        rates.append(nbytes / GB / max(seconds, 1e-12))
    return rates


CPU0_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def last_level_cache_bytes(caches: Path = CPU0_CACHES) -> int | None:
    """The largest CPU cache sysfs lists (usually the shared L3), or None off Linux."""
    sizes = []
    for size_file in Path(caches).glob("index*/size"):
        text = size_file.read_text().strip()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except (ValueError, IndexError):
            continue
    return max(sizes) if sizes else None


def read_bandwidth(threads: int, nbytes: int = 1 << 30, repeats: int = 7,
                   warmup: int = 1) -> dict:
    """Median read bandwidth (GB/s, 1e9 bytes) of `repeats` sweeps over an `nbytes` float32
    buffer summed with `threads` intra-op threads, with the min-max spread. The torch thread
    count is restored afterwards. About nbytes / bandwidth * (repeats + warmup) seconds:
    under a second for 1 GiB at 10 GB/s and 7 repeats."""
    import torch

    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    elements = max(nbytes // 4, 1)
    buffer = torch.empty(elements, dtype=torch.float32)
    buffer.fill_(1.0)  # touch every page: see the module docstring
    load_before = os.getloadavg()[0]  # a shared machine's other work skews the numbers
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            buffer.sum()
        rates = time_sweeps(buffer.sum, elements * 4, repeats)
    finally:
        torch.set_num_threads(previous)
    cache = last_level_cache_bytes()
    return {"threads": threads, "nbytes": elements * 4, "repeats": repeats,
            **summarize(rates), "last_level_cache_bytes": cache,
            "buffer_exceeds_cache": None if cache is None else elements * 4 > 2 * cache,
            "load_average_1min": [load_before, os.getloadavg()[0]]}


def decode_bound(bytes_per_token: float, gb_per_s: float) -> dict:
    """The fastest a decode step can be if it must stream `bytes_per_token` bytes at
    `gb_per_s`: seconds per token and the matching tokens/s ceiling."""
    if bytes_per_token <= 0 or gb_per_s <= 0:
        raise ValueError("bytes per token and bandwidth must be positive")
    seconds = bytes_per_token / (gb_per_s * GB)
    return {"seconds_per_token": seconds, "tokens_per_s": 1 / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nbytes", type=int, nargs="+", default=[1 << 30])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps([read_bandwidth(t, n, args.repeats) for n in args.nbytes
                      for t in args.threads], indent=2))


if __name__ == "__main__":
    main()
