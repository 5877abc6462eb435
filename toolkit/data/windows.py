"""Evaluation windows: the fixed perplexity protocol over a token stream.

Windows are non-overlapping and start at token 0, so every tool that evaluates the same
stream at the same `seq_len` sees the same tokens; a subset (`count`) is spread evenly
over the whole stream rather than taken from its start, so a quick evaluation still
covers every part of the text.
"""

from __future__ import annotations

import torch

from toolkit.errors import UserError


def eval_windows(stream: torch.LongTensor, seq_len: int, count: int | None) -> torch.LongTensor:
    """Non-overlapping `seq_len` windows of `stream`, shape [K, seq_len].

    The tail shorter than `seq_len` is dropped. `count=None` (or `count >=` the number
    of windows) keeps them all; otherwise window indices
    `torch.linspace(0, total - 1, count).round().long()` are kept (unique, in order).
    """
    if seq_len < 1:
        raise UserError(f"evaluation --seq-len must be positive, got {seq_len}")
    if count is not None and count < 1:
        raise UserError(f"evaluation window count must be positive, got {count}")
    total = len(stream) // seq_len
    if total == 0:
        raise UserError(
            f"evaluation text has {len(stream)} tokens, fewer than one window of --seq-len "
            f"{seq_len}; use a smaller --seq-len or a longer text"
        )
    windows = stream[: total * seq_len].to(torch.int64).reshape(total, seq_len)
    if count is None or count >= total:
        return windows.clone()
    index = torch.unique(torch.linspace(0, total - 1, count).round().long())
    return windows[index]
