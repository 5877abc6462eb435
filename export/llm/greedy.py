"""Greedy decoding through any runtime that implements the exported decoder's contract
(export.llm.decoder): prefill the prompt, then feed one token at a time with the caches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# step(input_ids [1, T] int64, position [1] int64, keys, values) -> (logits, keys, values)
Step = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                tuple[np.ndarray, np.ndarray, np.ndarray]]


def prefill(step: Step, prompt: Sequence[int], cache_shape: Sequence[int],
            max_context: int, chunk: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt logits [T, V], keys, values) after running `prompt` from an empty cache.

    A format with a fixed-length prefill signature passes its length as `chunk`: the
    prompt goes in chunks of that many tokens, the last one padded. Padding writes junk
    keys at positions after the prompt, which the causal mask hides until the decode step
    that owns each position overwrites it first."""
    chunk = chunk or len(prompt)
    padded = -(-len(prompt) // chunk) * chunk
    if padded > max_context:
        raise ValueError(f"the prompt padded to whole {chunk}-token prefill chunks ({padded}) "
                         f"exceeds the exported context of {max_context}")
    keys = np.zeros(cache_shape, dtype=np.float32)
    values = np.zeros(cache_shape, dtype=np.float32)
    pieces = []
    for start in range(0, len(prompt), chunk):
        real = list(prompt[start:start + chunk])
        ids = np.asarray([real + [0] * (chunk - len(real))], dtype=np.int64)
        logits, keys, values = step(ids, np.array([start], dtype=np.int64), keys, values)
        pieces.append(np.asarray(logits)[0, :len(real)])
    return np.concatenate(pieces), keys, values


def greedy_tokens(step: Step, prompt: Sequence[int], new_tokens: int,
                  cache_shape: Sequence[int], max_context: int,
                  prefill_step: Step | None = None, prefill_tokens: int | None = None
                  ) -> tuple[list[int], np.ndarray]:
    """The `new_tokens` greedy continuation of `prompt` and the prefill logits [T, V];
    `prefill_step` and `prefill_tokens` for a fixed-length prefill signature (`prefill`)."""
    if len(prompt) + new_tokens > max_context:
        raise ValueError(f"prompt ({len(prompt)}) + {new_tokens} new tokens exceed the "
                         f"exported context of {max_context}")
    prefill_logits, keys, values = prefill(prefill_step or step, prompt, cache_shape,
                                           max_context, prefill_tokens)
    tokens = [int(prefill_logits[-1].argmax())]
    position = len(prompt)
    while len(tokens) < new_tokens:
        ids = np.asarray([[tokens[-1]]], dtype=np.int64)
        logits, keys, values = step(ids, np.array([position], dtype=np.int64), keys, values)
        tokens.append(int(np.asarray(logits)[0, -1].argmax()))
        position += 1
    return tokens, prefill_logits
