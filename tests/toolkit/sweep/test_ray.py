"""`toolkit sweep --ray`: a cluster that does not answer is refused in one line within the
bounded wait; a local Ray instance started here runs the points and gives the rows a
local pool gives."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.toolkit.sweep.helpers import SPEC, results, write_spec
from toolkit.sweep.points import DONE

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'edge-toolkit[sweep]')")

# What differs between two runs of the same point: time, memory, and the size on disk by
# the few bytes of the timings written in toolkit.json (compared to within 2 kB).
VOLATILE = {"compress_seconds", "compress_wall_seconds", "peak_rss_mb", "size_mb"}
TWO_POINTS = {**SPEC, "grid": {"stages": [{"method": "rtn", "bits": 4, "group_size": 32}]}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def same_rows(out_a: Path, out_b: Path) -> None:
    rows_a, rows_b = results(out_a)["rows"], results(out_b)["rows"]
    assert [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows_a] == \
        [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows_b]
    assert [r["size_mb"] for r in rows_a] == pytest.approx([r["size_mb"] for r in rows_b],
                                                           abs=2e-3)


def test_an_address_that_does_not_answer_is_refused_within_the_wait(toolkit_cli, tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    result = toolkit_cli("sweep", write_spec(tmp_path, TWO_POINTS), "--out", out,
                         "--ray", f"127.0.0.1:{free_port()}", "--ray-timeout", "2")
    elapsed = time.monotonic() - start
    assert result.code == 2
    assert len(result.err_lines) == 1 and "does not answer" in result.err
    assert "after 2 s" in result.err
    assert 2 <= elapsed < 15  # the wait, plus importing ray and reading the spec
    assert not out.exists()


def test_a_malformed_address_is_refused(toolkit_cli, tmp_path):
    result = toolkit_cli("sweep", write_spec(tmp_path, TWO_POINTS), "--out", tmp_path / "o",
                         "--ray", "no-port-here")
    assert result.code == 2 and len(result.err_lines) == 1
    assert "write HOST:PORT" in result.err


@pytest.fixture(scope="module")
def local_ray():
    """A one-CPU Ray instance of this test process, shut down (its processes with it)
    after the module."""
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def sweep_process(spec: Path, out: Path, *extra: str, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "toolkit", "sweep", str(spec), "--out",
                           str(out), *extra], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


@pytest.mark.slow
def test_ray_runs_the_same_rows_as_the_local_pool(local_ray, toolkit_cli, tmp_path):
    spec = write_spec(tmp_path, TWO_POINTS)
    local = toolkit_cli("sweep", spec, "--out", tmp_path / "local", "--jobs", "2",
                        "--threads", "1")
    assert local.code == 0, local.err
    on_ray = sweep_process(spec, tmp_path / "ray", "--ray", local_ray)
    assert on_ray.returncode == 0, on_ray.stderr
    assert on_ray.stdout.count("done in") == 2
    same_rows(tmp_path / "ray", tmp_path / "local")
    # `auto` finds the same cluster through RAY_ADDRESS; the unfinished point runs there.
    row = results(tmp_path / "ray")["rows"][0]
    (tmp_path / "ray" / "points" / row["key"] / DONE).unlink()
    again = sweep_process(spec, tmp_path / "ray", "--ray", "auto",
                          env={"RAY_ADDRESS": local_ray})
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done in") == 1 and again.stdout.count("reused") == 1
    same_rows(tmp_path / "ray", tmp_path / "local")
