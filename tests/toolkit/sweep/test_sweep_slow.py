"""Slower sweep checks (`make test-slow`): a sweep killed with SIGKILL resumes, a point
that fails is reported while the others finish (and is retried by a rerun), and --bench
onnx adds latencies, the latency fronts and a latency budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.toolkit.sweep.helpers import NAMES, SPEC, results, staircase_front, write_spec
from toolkit.sweep.points import DONE, LOG

pytestmark = pytest.mark.slow


def test_a_killed_sweep_resumes_without_redoing_finished_points(toolkit_cli, tmp_path):
    spec, out = write_spec(tmp_path), tmp_path / "out"
    # Its own session, so the sweep and the worker it started die together.
    sweep = subprocess.Popen([sys.executable, "-m", "toolkit", "sweep", str(spec), "--out",
                              str(out), "--jobs", "1", "--threads", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not list(out.glob(f"points/*/{DONE}")):
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    finished = [p.parent for p in out.glob(f"points/*/{DONE}")]
    assert len(finished) == 1 and not (out / "results.json").exists()
    stamp = {p: p.stat().st_mtime_ns for p in finished[0].rglob("*") if p.is_file()}
    again = toolkit_cli("sweep", spec, "--out", out, "--jobs", "2", "--threads", "1")
    assert again.code == 0, again.err
    assert again.out.count("reused") == 1 and again.out.count("done in") == 2
    assert {p: p.stat().st_mtime_ns for p in finished[0].rglob("*") if p.is_file()} == stamp
    assert sorted(r["name"] for r in results(out)["rows"]) == sorted(NAMES)
    assert not list(out.glob("points/*/.*staging*")), "a killed run's staging was left"


def test_a_point_that_fails_is_reported_and_the_others_finish(toolkit_cli, tmp_path):
    data = {**SPEC, "grid": {"stages": [{"method": "rtn", "bits": 4, "group_size": 48}]}}
    out = tmp_path / "out"
    result = toolkit_cli("sweep", write_spec(tmp_path, data), "--out", out, "--jobs", "2")
    assert result.code == 2
    assert len(result.err_lines) == 1 and "1 of 2 points failed (first: rtn:" in result.err
    rows = {row["name"]: row for row in results(out)["rows"]}
    assert "48" in rows["rtn"]["error"] and rows["wanda50"]["wiki_ppl"] > 0
    failed = out / "points" / rows["rtn"]["key"]
    assert (failed / LOG).is_file() and not (failed / DONE).exists()
    assert "failed:" in (out / "results.md").read_text()
    # A rerun retries the failed point (it has no done.json) and reuses the finished one.
    (failed / LOG).write_text("stale\n", encoding="utf-8")
    again = toolkit_cli("sweep", write_spec(tmp_path, data), "--out", out, "--jobs", "2")
    assert again.code == 2 and "1 of 2 points failed (first: rtn:" in again.err
    assert "[sweep] wanda50: finished earlier, reused" in again.out
    assert "[sweep] 1/1 rtn: failed:" in again.out
    assert "stale" not in (failed / LOG).read_text(encoding="utf-8")  # it ran again


def test_bench_onnx_adds_latency_fronts_and_a_latency_budget(toolkit_cli, tmp_path):
    spec, out = write_spec(tmp_path), tmp_path / "out"
    result = toolkit_cli("sweep", spec, "--out", out, "--jobs", "2", "--threads", "1",
                         "--bench", "onnx")
    assert result.code == 0, result.err
    data = results(out)
    rows = data["rows"]
    for row in rows:
        bench_dirs = list((out / "points" / row["key"]).glob("bench-onnx-*"))
        assert len(bench_dirs) == 1 and (bench_dirs[0] / "model.onnx").is_file()
        report = json.loads((bench_dirs[0] / "bench.json").read_text())
        assert row["latency_ms"] == report["models"][0]["latency"]["p50_ms"] > 0
    fronts = {(f["cost"], f["score"]): f["names"] for f in data["pareto"]}
    assert len(fronts) == 4 and all((out / f["plot"]).is_file() for f in data["pareto"])
    assert fronts[("latency_ms", "wiki_ppl")] == staircase_front(rows, "latency_ms",
                                                                 "wiki_ppl", False)
    # A budget on both: the brute-force pick among the points within both limits.
    size_kb = f"{sorted(r['size_mb'] for r in rows)[1] * 1000 + 0.5:.1f}"
    latency_ms = f"{sorted(r['latency_ms'] for r in rows)[1] + 0.0005:.4f}"
    fits = [r for r in rows if r["size_mb"] <= float(size_kb) / 1000
            and r["latency_ms"] <= float(latency_ms)]
    limit = f"size={size_kb}kB,latency={latency_ms}ms"
    picked = toolkit_cli("sweep", spec, "--out", out, "--bench", "onnx", "--budget", limit)
    if fits:
        best = min(fits, key=lambda r: (r["wiki_ppl"], -r["closed_book_pct"]))
        assert picked.code == 0, picked.err
        assert f": {best['name']} (wiki ppl" in picked.out
    else:
        assert picked.code == 2 and "the closest is" in picked.err
    assert picked.out.count("reused") == 3  # the bench results were cached too
