"""Where Edge Toolkit keeps what it derives once (dequantized models, cleaned text), and
what happens to a damaged entry: it is removed, rebuilt, and the rebuild is said in one
line on stderr (a truncated file, wrong JSON, wrong tensor shapes, an unreadable
safetensors header or a directory where a file belongs are all the same to a user)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path


def toolkit_cache_dir() -> Path:
    """`$EDGE_TOOLKIT_CACHE` if set, else `~/.cache/edge-toolkit`."""
    env = os.environ.get("EDGE_TOOLKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-toolkit"


def discard_damaged(path: Path, reason: str) -> None:
    """Remove the damaged cache entry `path` (file or folder) and say it will be rebuilt."""
    print(f"toolkit: cache entry {path} was damaged ({reason}); rebuilt it",
          file=sys.stderr)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # an unremovable entry: the rebuild's own write reports the problem


_UNWRITABLE_SAID: set[str] = set()


def note_unwritable(path: Path, exc: OSError) -> None:
    """Say once per process that a cache entry could not be written: the command goes on
    without it (only slower next time), and the line names the fix."""
    if str(path) in _UNWRITABLE_SAID:
        return
    _UNWRITABLE_SAID.add(str(path))
    print(f"toolkit: could not write cache entry {path} ({exc.strerror or exc}); going on "
          "without it: free space or set EDGE_TOOLKIT_CACHE to a writable folder",
          file=sys.stderr)


STALE_AGE_SECONDS = 24 * 3600


def sweep_stale_builds(target: Path) -> None:
    """Remove hidden `.NAME.*` build folders beside the cache entry `target` that are older
    than a day: a build killed with SIGKILL (the OOM killer) cannot clean up, and a
    dequantized model left that way is hundreds of MB nobody sees."""
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(f".{target.name}.") and entry.is_dir()):
            continue
        try:
            stale = now - entry.stat().st_mtime > STALE_AGE_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            print(f"toolkit: removed stale staging dir {entry} of a killed run",
                  file=sys.stderr)
