"""Where `toolkit.data` keeps text it derives once, and how it writes there safely.

Cleaning the Wikipedia dump costs about two seconds on every run; caching the result
makes repeated `toolkit` commands and tests start quickly. Writes are staged in a
temporary sibling and renamed into place so that a crash or a concurrent run never
leaves a half-written cache file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

# one definition for models and data
from models.cache import discard_damaged, note_unwritable, toolkit_cache_dir
from models.staging import sweep_stale_temp_files

__all__ = ["atomic_text_file", "data_cache_dir", "discard_damaged", "note_unwritable",
           "toolkit_cache_dir", "write_text_atomic"]


def data_cache_dir() -> Path:
    """The folder for cached data sets: `toolkit_cache_dir()/data`."""
    return toolkit_cache_dir() / "data"


@contextlib.contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """A UTF-8 text handle whose content replaces `path` only when the block completes.

    It writes a temporary sibling and `os.replace`s it: atomic on one file system, so
    readers see either the old file, no file, or the complete new one; an error or Ctrl-C
    inside the block removes the temporary file and leaves `path` as it was.
    """
    if _is_special(path):  # /dev/stdout, a FIFO: write into it; renaming would replace it
        with open(path, "w", encoding="utf-8", newline="") as handle:
            yield handle
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp_files(path.parent, path.name)
    # A unique name per writer, opened with "x" (fails rather than clobbers) and created
    # with the umask's permissions, unlike tempfile.mkstemp's owner-only 0600.
    # The name is cut so that a target name near the file system's limit still fits.
    tmp = path.with_name(f".{path.name[:100]}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # cleanup must not hide the first error
            tmp.unlink(missing_ok=True)
        raise


def _is_special(path: Path) -> bool:
    """True for an existing target that is neither a regular file nor a folder (a device,
    a FIFO, a socket), following symlinks."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` as UTF-8 to `path` via a temporary sibling (see atomic_text_file)."""
    with atomic_text_file(path) as handle:
        handle.write(text)
