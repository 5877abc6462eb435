"""Points run as independent jobs: each is `python -m toolkit.sweep.worker POINT_DIR` in a
fresh process (its own memory peak, its own crash), started by a local pool of `--jobs`
threads that each wait on one child, or by a Ray task on any node of a cluster
(toolkit/sweep/ray_run.py) that starts the same child there.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from toolkit.sweep.point_lock import PARENT_ENV
from toolkit.sweep.points import LOG


@dataclasses.dataclass(frozen=True)
class Outcome:
    key: str
    ok: bool
    seconds: float
    error: str | None = None


_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


def run_worker(point_dir: str, key: str) -> Outcome:
    """The worker process for one point; its output goes to the point's log.txt and its
    last line (the toolkit's one-line error) becomes the outcome's error."""
    start = time.perf_counter()
    log_path = Path(point_dir) / LOG
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen([sys.executable, "-m", "toolkit.sweep.worker", point_dir],
                                 stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        with _children_lock:
            _children.add(child)
        try:
            code = child.wait()
        finally:
            with _children_lock:
                _children.discard(child)
    seconds = time.perf_counter() - start
    if code == 0:
        return Outcome(key, True, seconds)
    return Outcome(key, False, seconds, _last_line(log_path) or f"exit code {code}")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TMPDIR", None)  # the parent's run folder is removed when it ends
    env[PARENT_ENV] = str(os.getpid())  # the worker ends with this process (point_lock.py)
    return env


def _last_line(path: Path) -> str | None:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8",
                                                           errors="replace").splitlines()]
    except OSError:
        return None
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("toolkit ") and "error" in line]
    if errors:
        return errors[-1][:500]
    return lines[-1][:500] if lines else None


def stop_children() -> None:
    """Ctrl-C: end the workers this process started (each by its own pid)."""
    with _children_lock:
        children = list(_children)
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def run_local(work: Iterable[tuple[str, str]], jobs: int,
              on_done: Callable[[Outcome], None]) -> list[Outcome]:
    """Run (point_dir, key) pairs with at most `jobs` workers at once."""
    outcomes: list[Outcome] = []
    futures: list[concurrent.futures.Future] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(run_worker, point_dir, key) for point_dir, key in work]
        for future in concurrent.futures.as_completed(futures):
            outcome = future.result()
            on_done(outcome)
            outcomes.append(outcome)
    except BaseException:
        for future in futures:
            future.cancel()
        stop_children()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes
