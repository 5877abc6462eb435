"""Calibration batches: seeded sampling from a token pool, user files, and hashing.

Sampling uses the global torch RNG right after `torch.manual_seed(seed)` so that any
tool which follows the same two calls draws the same offsets; the hash of the batch goes
into the artifact manifest so a result can be traced to the exact tokens it saw.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import UserError

TEXT_SEPARATOR = "\n\n"


def sample_calibration(pool: torch.LongTensor, n: int, seq_len: int, seed: int) -> torch.LongTensor:
    """`n` windows of `seq_len` tokens at random offsets of `pool`, shape [n, seq_len].

    Offsets are `torch.randint(0, len(pool) - seq_len, (n,))` drawn right after
    `torch.manual_seed(seed)`; windows may overlap (as in the GPTQ/Wanda reference code).
    The global RNG is left seeded: callers that need their own stream reseed it.
    """
    if n < 1 or seq_len < 1:
        raise UserError(
            f"calibration needs at least one sample of at least one token "
            f"(got {n} samples of {seq_len}); pass positive --calib-samples and --seq-len"
        )
    if pool.dim() != 1:
        raise UserError(f"calibration pool must be 1-D token ids, got shape {tuple(pool.shape)}")
    if len(pool) < seq_len + 1:
        raise UserError(
            f"calibration text has {len(pool)} tokens, fewer than --seq-len {seq_len} + 1; "
            "use a longer calibration file or a smaller --seq-len"
        )
    torch.manual_seed(seed)
    offsets = torch.randint(0, len(pool) - seq_len, (n,))
    index = offsets[:, None] + torch.arange(seq_len)[None, :]
    return pool.to(torch.int64)[index]


def token_hash(tokens: torch.Tensor) -> str:
    """sha256 hex of the tokens as int64 little-endian bytes (row-major)."""
    array = tokens.detach().to(device="cpu", dtype=torch.int64).contiguous().numpy()
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<i8").tobytes()).hexdigest()


def _looks_like_jsonl(path: Path, text: str) -> bool:
    """`.jsonl` extension, or the first non-empty line is a JSON object."""
    if path.suffix.lower() == ".jsonl":
        return True
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _jsonl_texts(path: Path, text: str) -> list[str]:
    """The `text` field of every non-empty line; UserError naming the bad line."""
    texts = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(
                f"calibration file {path} line {number} is not valid JSON ({exc}); "
                'write one object like {"text": "..."} per line'
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(
                f'calibration file {path} line {number} has no "text" string; '
                'give every line a "text" field, e.g. {"text": "..."}'
            )
        texts.append(record["text"])
    return texts


def read_calibration_file(path: str | os.PathLike[str]) -> str:
    """The text of a user's calibration file: plain UTF-8 text, or JSONL whose lines'
    `text` fields are joined by one blank line. Errors are one-line UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration file {path} not found; pass an existing .txt or .jsonl file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"calibration file {path} is not UTF-8 (bad byte at offset {exc.start}); "
            "re-save it with UTF-8 encoding"
        ) from None
    if _looks_like_jsonl(path, text):
        text = TEXT_SEPARATOR.join(_jsonl_texts(path, text))
    if not text.strip():
        raise UserError(f"calibration file {path} holds no text; give it some text to calibrate on")
    return text
