"""Hidden staging folders next to an output, and the sweep of those a killed run left.

A run writes into `.NAME.staging-PID-XXXXXXXX` and renames it into place; any error or
Ctrl-C removes it, but SIGKILL (the OOM killer, `kill -9`) cannot be caught. The pid in
the name lets a later run tell a dead writer's folder from a live one: it removes the
folders of processes that no longer exist, and any staging folder older than a day
(pids are reused, and folders from before this naming carry none), saying so in one line.

Folders are created with the user's umask (0755 under umask 022), not tempfile's
owner-only 0700, so other users can read the artifact once it is in place.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

STALE_AGE_SECONDS = 24 * 3600
NAME_PREFIX_CHARS = 100  # keeps `.NAME.staging-PID-XXXXXXXX` within 255 bytes
_WITH_PID = re.compile(r"^\..*\.(staging|old)-(\d+)-[A-Za-z0-9_]{8}$")
_WITHOUT_PID = re.compile(r"^\..*\.(staging|old)-[A-Za-z0-9_]{8}$")


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_staging_dir(out: Path, kind: str = "staging") -> Path:
    """A new empty folder `.NAME.KIND-PID-XXXXXXXX` beside `out`, mode 0777 & ~umask."""
    prefix = f".{out.name[:NAME_PREFIX_CHARS]}.{kind}-{os.getpid()}-"
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can judge: leave it
    return True


def is_stale(entry: Path, now: float) -> bool:
    """True for a staging folder whose writer is dead, or that is older than a day."""
    with_pid = _WITH_PID.match(entry.name)
    if with_pid is None and _WITHOUT_PID.match(entry.name) is None:
        return False
    try:
        age = now - entry.lstat().st_mtime
    except OSError:
        return False
    if age > STALE_AGE_SECONDS:
        return True
    if with_pid is None:
        return False
    pid = int(with_pid.group(2))
    return pid != os.getpid() and not pid_alive(pid)


def sweep_stale_staging(folder: Path) -> list[Path]:
    """Remove the stale staging folders in `folder` (see the module docstring); the paths
    removed. Never fails: a sweep that cannot remove something leaves it."""
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink() and is_stale(entry, now):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                print(f"toolkit: removed stale staging dir {entry} of a killed run",
                      file=sys.stderr)
                removed.append(entry)
    return removed


_TEMP_FILE = re.compile(r"^\..*\.(\d+)\.[0-9a-f]{32}\.tmp$")


def sweep_stale_temp_files(folder: Path, name: str) -> None:
    """Remove `.NAME.PID.HEX.tmp` files (toolkit.data.cache.atomic_text_file) of `name`
    in `folder` whose writer is dead or that are older than a day, with one line each."""
    try:
        entries = [e for e in folder.iterdir() if e.name.startswith(f".{name[:100]}.")]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        match = _TEMP_FILE.match(entry.name)
        if match is None or not entry.is_file():
            continue
        pid = int(match.group(1))
        try:
            old = now - entry.lstat().st_mtime > STALE_AGE_SECONDS
        except OSError:
            continue
        if old or (pid != os.getpid() and not pid_alive(pid)):
            try:
                entry.unlink()
            except OSError:
                continue
            print(f"toolkit: removed stale temporary file {entry} of a killed run",
                  file=sys.stderr)
