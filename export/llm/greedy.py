"""Greedy decoding through any runtime that implements the exported decoder's contract
(export.llm.decoder): prefill the prompt, then feed one token at a time with the caches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# step(input_ids [1, T] int64, position [1] int64, keys, values) -> (logits, keys, values)
Step = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                tuple[np.ndarray, np.ndarray, np.ndarray]]


def greedy_tokens(step: Step, prompt: Sequence[int], new_tokens: int,
                  cache_shape: Sequence[int], max_context: int
                  ) -> tuple[list[int], np.ndarray]:
    """The `new_tokens` greedy continuation of `prompt` and the prefill logits [T, V]."""
    if len(prompt) + new_tokens > max_context:
        raise ValueError(f"prompt ({len(prompt)}) + {new_tokens} new tokens exceed the "
                         f"exported context of {max_context}")
    keys = np.zeros(cache_shape, dtype=np.float32)
    values = np.zeros(cache_shape, dtype=np.float32)
    ids = np.asarray([list(prompt)], dtype=np.int64)
    logits, keys, values = step(ids, np.array([0], dtype=np.int64), keys, values)
    prefill_logits = np.asarray(logits)[0]
    tokens = [int(prefill_logits[-1].argmax())]
    position = len(prompt)
    while len(tokens) < new_tokens:
        ids = np.asarray([[tokens[-1]]], dtype=np.int64)
        logits, keys, values = step(ids, np.array([position], dtype=np.int64), keys, values)
        tokens.append(int(np.asarray(logits)[0, -1].argmax()))
        position += 1
    return tokens, prefill_logits
