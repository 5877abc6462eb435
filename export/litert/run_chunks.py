"""Run a chunked LiteRT LLM (export.litert.chunked) as one step function: the chunks'
interpreters in sequence, each handed its slice of the whole cache.

The step has the one-file decoder's contract (export.llm.greedy), with keys/values
[all layers, kv_heads, C, D]: chunk k reads and returns rows start..stop of them, so
greedy decoding, the bench and the bundle reader drive a chunked export unchanged.
Chunk files are named OUT_chunk1.tflite .. OUT_chunkN.tflite; any one of them (or OUT,
which a chunked export does not write) names the set.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

CHUNK_NAME = re.compile(r"^(?P<stem>.+)_chunk(?P<index>\d+)$")


def chunk_files(path: Path) -> list[Path]:
    """The chunk files of the export that `path` names, in order; [path] for one file."""
    path = Path(path)
    match = CHUNK_NAME.match(path.stem)
    stem = match["stem"] if match else path.stem
    found = {}
    for candidate in path.parent.glob(f"{stem}_chunk*{path.suffix}"):
        named = CHUNK_NAME.match(candidate.stem)
        if named and named["stem"] == stem:
            found[int(named["index"])] = candidate
    if not found or (not match and path.exists()):
        return [path]
    if sorted(found) != list(range(1, len(found) + 1)):
        raise FileNotFoundError(f"chunk files of {stem} are not numbered 1..{max(found)}: "
                                f"have {sorted(found)}")
    return [found[i] for i in sorted(found)]


def chained_steps(paths: list[Path], threads: int | None = None):
    """(prefill step, decode step, prefill length, whole cache shape) over the chunks."""
    from export.litert.run_llm import signature_steps

    parts = [signature_steps(str(p), threads) for p in paths]
    prefill_tokens = parts[0][2]
    bounds, start = [], 0
    for part in parts:
        bounds.append((start, start + part[3][0]))
        start += part[3][0]
    cache_shape = [start, *parts[0][3][1:]]

    def chain(which: int):
        steps = [part[which] for part in parts]

        def step(ids, position, keys, values):
            x, new_keys, new_values = ids, [], []
            for run, (a, b) in zip(steps, bounds, strict=True):
                x, k, v = run(x, position, np.ascontiguousarray(keys[a:b]),
                              np.ascontiguousarray(values[a:b]))
                new_keys.append(k)
                new_values.append(v)
            return x, np.concatenate(new_keys), np.concatenate(new_values)
        return step
    return chain(0), chain(1), prefill_tokens, cache_shape
