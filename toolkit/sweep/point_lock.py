"""One worker per sweep point at a time, and no worker outliving the sweep that started it.

A sweep killed outright (SIGKILL, a closed terminal, an out-of-memory kill) cannot stop its
workers, and a resumed sweep would start the same point again: two processes writing one
artifact folder. Two guards, both in the worker:

- `end_with_parent`: on Linux the worker asks the kernel for SIGTERM when the process that
  started it ends (prctl PR_SET_PDEATHSIG), so an orphan stops with its sweep. Its outputs
  are each written atomically or in a staging folder, so the resumed point starts again
  at the step that was cut.
- `point_lock`: the worker holds an exclusive lock on `POINT/.worker.lock` (flock) while
  it runs. A second worker on the same point (two sweeps sharing a recipe, or an orphan
  where the death signal is not available) waits for the first, says so in one line with
  the holder's pid, and then finds the finished steps done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK = ".worker.lock"
PARENT_ENV = "TOOLKIT_SWEEP_PARENT"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent() -> None:
    """SIGTERM this process when the one named by $TOOLKIT_SWEEP_PARENT ends (Linux only;
    elsewhere a no-op). The kernel sends it when the starting *thread* exits: the sweep
    starts each worker from a pool thread that lives until the sweep is done."""
    parent = os.environ.get(PARENT_ENV)
    if not sys.platform.startswith("linux") or not parent:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return  # not allowed here (e.g. a seccomp sandbox): the lock still guards the point
    if os.getppid() != int(parent):  # the parent ended before the request took hold
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def point_lock(point: Path, say: Callable[[str], None]) -> Iterator[None]:
    """Hold `point`'s worker lock for the block, waiting (after one line through `say`)
    while another process holds it. Without fcntl (Windows) the block runs unguarded."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(point / LOCK, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            say(f"point {point.name} is being run by process {holder}: waiting for it to "
                "finish (stop that process to run the point here instead)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
