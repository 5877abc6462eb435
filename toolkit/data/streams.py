"""Token streams for calibration and evaluation, tokenized once per text.

The Wikipedia text is tokenized as one string (not article by article) so token
boundaries, and therefore counts and perplexities, match every other tool that follows
the same recipe. Its first 90 % of tokens is the calibration pool and the rest the
held-out Wikipedia evaluation stream, so calibration never sees evaluation tokens. The
news text is a second, out-of-domain evaluation stream. No special tokens are added:
the GGUF SmolLM2 tokenizer would otherwise prepend `<|im_start|>` as BOS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from toolkit.data.cache import discard_damaged, note_unwritable
from toolkit.data.news import news_text
from toolkit.data.wikipedia import wikipedia_text
from toolkit.os_errors import os_error_from

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Share of the Wikipedia tokens used for calibration; the rest is held out for eval.
CALIB_FRACTION = 0.9
STREAM_NAMES = ("calib_pool", "wiki_eval", "news_eval")


@dataclass(frozen=True)
class TokenStreams:
    """1-D int64 token ids: calibration pool, held-out Wikipedia, out-of-domain news."""

    calib_pool: torch.LongTensor
    wiki_eval: torch.LongTensor
    news_eval: torch.LongTensor


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.LongTensor:
    """Token ids of `text` as a 1-D int64 tensor, with no special tokens.

    `truncation=False` keeps every token; `verbose=False` silences the "sequence longer
    than the model's maximum" warning, which does not apply because the stream is cut
    into windows later.
    """
    encoded = tokenizer(
        text,
        add_special_tokens=False,
        truncation=False,
        verbose=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return torch.tensor(encoded["input_ids"], dtype=torch.int64)


def split_calibration(tokens: torch.LongTensor) -> tuple[torch.LongTensor, torch.LongTensor]:
    """(first int(0.9 * n) tokens, the rest)."""
    cut = int(CALIB_FRACTION * len(tokens))
    return tokens[:cut], tokens[cut:]


def build_streams(tokenizer: PreTrainedTokenizerBase) -> TokenStreams:
    """Tokenize the Wikipedia and news texts once and split Wikipedia 90/10."""
    calib_pool, wiki_eval = split_calibration(tokenize_text(tokenizer, wikipedia_text()))
    return TokenStreams(
        calib_pool=calib_pool,
        wiki_eval=wiki_eval,
        news_eval=tokenize_text(tokenizer, news_text()),
    )


def cached_streams(tokenizer: PreTrainedTokenizerBase) -> TokenStreams:
    """`build_streams`, cached on disk per tokenizer: tokenizing 3.1M characters costs
    3-5 s on every command otherwise. The key hashes the tokenizer's full serialization
    and both texts, so a different tokenizer or text never reuses a stale cache."""
    from safetensors.torch import save_file

    from toolkit.data.cache import data_cache_dir

    key = _streams_key(tokenizer)
    if key is None:
        return build_streams(tokenizer)
    path = data_cache_dir() / f"streams-{key}.safetensors"
    cached = _read_streams(path)
    if cached is not None:
        return cached
    streams = build_streams(tokenizer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: getattr(streams, name).to(torch.int32).contiguous()
                   for name in STREAM_NAMES}, str(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # cleanup must not hide the first error
            tmp.unlink(missing_ok=True)
        os_exc = os_error_from(exc)
        if os_exc is None:
            raise
        note_unwritable(path, os_exc)  # a full or read-only cache only costs time
    return streams


def _read_streams(path: Path) -> TokenStreams | None:
    """The cached streams, or None when absent; a damaged entry (truncated, an unreadable
    header, other tensors or shapes, a folder) is removed, said, and rebuilt by the caller."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists() and not path.is_symlink():
        return None
    try:
        saved = load_file(path)
    except (OSError, ValueError, RuntimeError, TypeError, SafetensorError) as exc:
        discard_damaged(path, type(exc).__name__)
        return None
    if set(saved) != set(STREAM_NAMES) or any(
            t.dim() != 1 or t.numel() == 0 or t.is_floating_point() for t in saved.values()):
        discard_damaged(path, "not three 1-D integer token streams")
        return None
    return TokenStreams(**{k: v.to(torch.int64) for k, v in saved.items()})


def _streams_key(tokenizer: PreTrainedTokenizerBase) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256(backend.to_str().encode("utf-8"))
    digest.update(wikipedia_text().encode("utf-8"))
    digest.update(news_text().encode("utf-8"))
    return digest.hexdigest()[:32]
