"""The contents of `toolkit.json`: what was run, on what, with which libraries."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform

LIBRARIES = ("edge-toolkit", "torch", "transformers", "safetensors", "tokenizers", "gensim",
             "numpy", "gguf")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
