"""Named places where a test can make the process die as `kill -9` would, to prove that a
streaming run resumes from any of them.

`EDGE_TOOLKIT_CRASH_AT="NAME:K"` makes the K-th arrival (from 1) at crash point NAME send
SIGKILL to the process itself: no `finally`, no `except`, no atexit runs, exactly what the
OOM killer or a power cut leaves behind. Unset (always, outside tests) a crash point costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "EDGE_TOOLKIT_CRASH_AT"
_arrivals: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, count = spec.partition(":")
    if wanted != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
