"""A file that appears complete or not at all: written under a temporary name beside its
target, flushed and fsynced, then renamed over it. A crash, a full disk or Ctrl-C leaves
the old file (or none) and no temporary."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, or nothing there at all."""
    with atomic_file(path) as handle:
        handle.write(data)
