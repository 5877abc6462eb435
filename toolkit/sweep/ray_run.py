"""Points as Ray tasks (`toolkit sweep --ray auto|ADDRESS`).

Each task starts the same worker process as the local pool, on whichever node Ray
chooses, reserving as many CPUs as the point's torch threads (1 by default). The nodes
must see `--out` at the same path (a shared file system): the driver writes a random
token into it and a task that cannot read the same token fails in one line saying so,
instead of writing its artifacts where nobody looks.

A cluster that does not answer is found by connecting to its address for at most
`--ray-timeout` seconds before `ray.init` (which would otherwise retry for minutes).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from toolkit.errors import UserError
from toolkit.sweep.execute import Outcome, run_worker

INSTALL_FIX = "install the sweep extra: pip install 'edge-toolkit[sweep]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs the ray package: {INSTALL_FIX}") from None
    return ray


def cluster_address(address: str) -> str:
    """host:port (or ray://host:port) of the cluster; `auto` reads RAY_ADDRESS or the
    cluster `ray start` left on this machine."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError):
        found = None
    if found is None:
        raise UserError("--ray auto: no running Ray cluster found (RAY_ADDRESS is unset and "
                        "`ray start` was not run on this machine): start one or pass "
                        "--ray HOST:PORT")
    return found


def host_port(address: str) -> tuple[str, int]:
    bare = address.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--ray {address}: write HOST:PORT (or ray://HOST:PORT, or auto)")
    return host.strip("[]"), int(port)


def wait_for_answer(address: str, timeout: float) -> None:
    """Connect to the cluster's port until it answers or `timeout` seconds have passed."""
    host, port = host_port(address)
    deadline = time.monotonic() + timeout
    reason = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UserError(f"--ray {address}: the Ray cluster does not answer ({reason}) "
                            f"after {timeout:g} s: start it (`ray start --head`), check the "
                            "address, or raise --ray-timeout")
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 2.0)):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


def _point_task(point_dir: str, key: str, token_file: str, token: str) -> Outcome:
    try:
        seen = Path(token_file).read_text(encoding="utf-8").strip()
    except OSError:
        seen = None
    if seen != token:
        return Outcome(key, False, 0.0, f"this Ray node does not see the sweep's --out at "
                       f"{Path(token_file).parent}: put --out on storage every node mounts "
                       "at the same path")
    return run_worker(point_dir, key)


def reachable_cluster(address: str, timeout: float) -> str:
    """The cluster's address once it answers (checked before the sweep writes anything)."""
    import_ray()
    found = cluster_address(address)
    wait_for_answer(found, timeout)
    return found


def run_ray(work: Iterable[tuple[str, str]], address: str, threads: int, token_file: Path,
            token: str, on_done: Callable[[Outcome], None]) -> list[Outcome]:
    """Run (point_dir, key) pairs as Ray tasks on the cluster at `address` (as
    `reachable_cluster` returned it), each reserving the CPUs its torch threads use."""
    ray = import_ray()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        task = ray.remote(num_cpus=threads, max_retries=0)(_point_task)
        pending = [task.remote(point_dir, key, str(token_file), token)
                   for point_dir, key in work]
        outcomes = []
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                outcome = ray.get(ready[0])
                on_done(outcome)
                outcomes.append(outcome)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return outcomes
    finally:
        ray.shutdown()
