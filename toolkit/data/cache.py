"""Where `toolkit.data` keeps text it derives once, and how it writes there safely.

Cleaning the Wikipedia dump costs about two seconds on every run; caching the result
makes repeated `toolkit` commands and tests start quickly. Writes are staged in a
temporary sibling and renamed into place so that a crash or a concurrent run never
leaves a half-written cache file that a later run would trust.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from models.cache import toolkit_cache_dir  # one definition for models and data

__all__ = ["data_cache_dir", "toolkit_cache_dir", "write_text_atomic"]


def data_cache_dir() -> Path:
    """The folder for cached data sets: `toolkit_cache_dir()/data`."""
    return toolkit_cache_dir() / "data"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` as UTF-8 to `path` via a temporary sibling and `os.replace`.

    `os.replace` is atomic on one file system, so readers see either the old file,
    no file, or the complete new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name per writer, opened with "x" (fails rather than clobbers) and created
    # with the umask's permissions, unlike tempfile.mkstemp's owner-only 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
