"""Knowledge-suite results cached per model, so `toolkit eval --compare` reuses them.

A result is stored as JSON under `toolkit_cache_dir()/eval/kick-<key>.json` with

    key = sha256(suite version, protocol, device, weights fingerprint)[:32]

The fingerprint of a directory hashes every file in it (weights, config, tokenizer)
except `toolkit.json`, whose timestamps do not change the model; of a `.gguf` file, the
file; of a registered name, the built module's tensors and its tokenizer. A directory's
or file's key is known before the model is loaded, so a cached result costs one pass of
hashing and no model load. Writes are atomic (temp file + rename); a damaged cache file
is removed, recomputed and said in one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from models import LoadedModel, load_model
from toolkit.artifacts import MANIFEST
from toolkit.data.cache import (
    discard_damaged,
    note_unwritable,
    toolkit_cache_dir,
    write_text_atomic,
)
from toolkit.eval.kick import SUITE_VERSION, KickProtocol, KickResult, Progress, run_kick_suite

_CHUNK = 1 << 22


def kick_cache_dir() -> Path:
    return toolkit_cache_dir() / "eval"


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def file_fingerprint(spec: str) -> str | None:
    """sha256 of a model directory's or GGUF file's content; None for other specs."""
    path = Path(spec).expanduser()
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.iterdir() if p.is_file()
                           and p.name != MANIFEST and not p.name.startswith(".")):
            digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
            _hash_file(digest, file)
        return digest.hexdigest()
    if path.is_file():
        _hash_file(digest, path)
        return digest.hexdigest()
    return None


def module_fingerprint(loaded: LoadedModel) -> str:
    """sha256 of the module's tensors (name, dtype, shape, bytes) and its tokenizer."""
    digest = hashlib.sha256()
    for name, tensor in sorted(loaded.module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(-1).view(dtype=torch.uint8).numpy().data)
    backend = getattr(loaded.tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    return digest.hexdigest()


def cache_path(fingerprint: str, protocol: KickProtocol, device: str) -> Path:
    key = json.dumps({"suite": SUITE_VERSION, "protocol": protocol.to_dict(),
                      "device": device, "weights": fingerprint}, sort_keys=True)
    return kick_cache_dir() / f"kick-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def read_cached(path: Path) -> KickResult | None:
    """The cached result, or None when absent; a damaged entry (truncated, not JSON, other
    fields, a folder) is removed, said in one line, and recomputed by the caller."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return KickResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        discard_damaged(path, type(exc).__name__)
        return None


def write_cached(path: Path, result: KickResult) -> None:
    """Cache `result`; a cache that cannot be written costs a recomputation next time, not
    this run's result (one line says so)."""
    try:
        write_text_atomic(path, json.dumps(result.to_dict(), indent=1) + "\n")
    except OSError as exc:
        note_unwritable(path, exc)


def evaluate_kick(spec: str, protocol: KickProtocol, *, device: str = "cpu",
                  progress: Progress | None = None, use_cache: bool = True,
                  load: Callable[[str], LoadedModel] = load_model,
                  ) -> tuple[KickResult, bool]:
    """(the suite's result for the model `spec`, whether it came from the cache)."""
    fingerprint = file_fingerprint(spec)
    if fingerprint is not None and use_cache:
        cached = read_cached(cache_path(fingerprint, protocol, device))
        if cached is not None:
            return cached, True
    loaded = load(spec)
    if fingerprint is None:
        fingerprint = module_fingerprint(loaded)
        if use_cache:
            cached = read_cached(cache_path(fingerprint, protocol, device))
            if cached is not None:
                return cached, True
    result = run_kick_suite(loaded, protocol, fingerprint=fingerprint, device=device,
                            progress=progress)
    if use_cache:
        write_cached(cache_path(fingerprint, protocol, device), result)
    return result, False
