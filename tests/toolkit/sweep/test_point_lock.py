"""A sweep point is never run by two workers at once, and a worker ends with its sweep
(toolkit/sweep/point_lock.py): real processes, a real lock, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from toolkit.sweep.execute import _child_env
from toolkit.sweep.point_lock import LOCK, PARENT_ENV, point_lock

REPO = Path(__file__).resolve().parents[3]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="flock and PR_SET_PDEATHSIG are Linux facilities")


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def _alive(pid: int) -> bool:
    """Running, not a zombie nobody reaped yet (a container's init may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


@linux_only
def test_a_second_worker_waits_for_the_first_and_names_it(tmp_path):
    point = tmp_path / "points" / "ab12 ü"
    point.mkdir(parents=True)
    holder = _python(f"""
        import sys, time
        from pathlib import Path
        from toolkit.sweep.point_lock import point_lock
        with point_lock(Path({str(point)!r}), print):
            print("held", flush=True)
            time.sleep(1.5)
    """)
    assert holder.stdout.readline().strip() == "held"
    said: list[str] = []
    start = time.monotonic()
    with point_lock(point, said.append):
        waited = time.monotonic() - start  # the holder sleeps 1.5 s after saying "held"
        assert (point / LOCK).read_text().strip() == str(os.getpid())
    holder.communicate()
    assert waited > 1.0
    assert len(said) == 1 and f"by process {holder.pid}" in said[0]
    assert said[0].startswith(f"point {point.name} is being run")


@linux_only
def test_a_free_point_is_taken_at_once_and_released(tmp_path):
    said: list[str] = []
    with point_lock(tmp_path, said.append):
        pass
    with point_lock(tmp_path, said.append):  # released: no wait, no message
        pass
    assert said == []


@linux_only
def test_a_worker_ends_when_the_sweep_that_started_it_is_killed(tmp_path):
    # The "sweep": starts a worker from a thread, as the local pool does, then sleeps.
    sweep = _python("""
        import os, subprocess, sys, threading, time
        from toolkit.sweep.execute import _child_env
        child = []
        def start():
            child.append(subprocess.Popen([sys.executable, "-c",
                "import time; from toolkit.sweep.point_lock import end_with_parent; "
                "end_with_parent(); print('ready', flush=True); time.sleep(120)"],
                env=_child_env(), stdout=subprocess.PIPE, text=True))
            child[0].stdout.readline()
            print(child[0].pid, flush=True)
            time.sleep(120)
        threading.Thread(target=start, daemon=True).start()
        time.sleep(120)
    """)
    worker = int(sweep.stdout.readline())
    assert _alive(worker)
    sweep.send_signal(signal.SIGKILL)
    sweep.communicate()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the orphaned worker kept running after its sweep was killed"


def test_workers_are_told_which_process_started_them():
    assert _child_env()[PARENT_ENV] == str(os.getpid())
