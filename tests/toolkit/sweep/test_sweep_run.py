"""A real sweep of 3 points on fake-llama (each point a worker process: `toolkit run`, then
the kick suite): its rows against `toolkit eval` on the same artifacts, its Pareto fronts
against an independent computation, its reports, re-runs and resumes, and --budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.toolkit.sweep.helpers import (
    EVAL,
    NAMES,
    SPEC,
    brute_force_best,
    results,
    staircase_front,
    write_spec,
)
from toolkit.sweep.points import ARTIFACT, COMPRESS, DONE
from toolkit.sweep.points import EVAL as EVAL_FILE


@pytest.fixture(scope="module")
def sweep(toolkit_cli, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    spec, out = write_spec(folder), folder / "out"
    result = toolkit_cli("sweep", spec, "--out", out, "--jobs", "2", "--threads", "1")
    assert result.code == 0, result.err
    return spec, out, result


def rows_by_name(out: Path) -> dict[str, dict]:
    return {row["name"]: row for row in results(out)["rows"]}


def point_dir(out: Path, row: dict) -> Path:
    return out / "points" / row["key"]


def test_every_point_has_a_row_with_measurements(sweep):
    _, out, result = sweep
    rows = rows_by_name(out)
    assert sorted(rows) == sorted(NAMES)
    for name, row in rows.items():
        assert row["size_mb"] > 0 and row["compress_wall_seconds"] > 0, name
        assert row["peak_rss_mb"] > 50, name  # a torch process, not a wrapper
        assert row["latency_ms"] is None
        artifact = point_dir(out, row) / ARTIFACT
        on_disk = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
        assert row["size_mb"] == pytest.approx(on_disk / 1e6)
        manifest = json.loads((artifact / "toolkit.json").read_text())
        expected_bits = (manifest.get("quantization") or {}).get("bits_per_weight", 32.0)
        assert row["bits_per_weight"] == pytest.approx(expected_bits)
    assert rows["rtn"]["bits_per_weight"] == pytest.approx(4.625)  # 4 bits + scale + zero / 32
    assert rows["wanda50"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result.out.count("done in") == 3


def test_rows_equal_what_toolkit_eval_reports(sweep, toolkit_cli, tmp_path):
    _, out, _ = sweep
    for name, row in rows_by_name(out).items():
        report = tmp_path / f"{name}.json"
        check = toolkit_cli("eval", point_dir(out, row) / ARTIFACT, "--suite", "kick",
                            "--no-cache", "--quiet", "--eval-windows", EVAL["windows"],
                            "--eval-seq-len", EVAL["seq_len"], "--kick-questions",
                            EVAL["kick_questions"], "--mmlu-questions", EVAL["mmlu_questions"],
                            "--json", report)
        assert check.code == 0, check.err
        scores = json.loads(report.read_text())["scores"]
        assert row["wiki_ppl"] == pytest.approx(scores["ppl_wikipedia"]["value"], rel=1e-9)
        assert row["news_ppl"] == pytest.approx(scores["ppl_news"]["value"], rel=1e-9)
        assert row["wiki_ppl_ci"] == pytest.approx([scores["ppl_wikipedia"]["low"],
                                                    scores["ppl_wikipedia"]["high"]], rel=1e-9)
        for column, score in (("closed_book", "factoid_closed_book"),
                              ("open_book", "factoid_open_book")):
            assert row[f"{column}_pct"] == pytest.approx(100 * scores[score]["value"])
            assert row[f"{column}_ci_pct"] == pytest.approx(
                [100 * scores[score]["low"], 100 * scores[score]["high"]])
            assert row[f"{column}_n"] == EVAL["kick_questions"]


def test_pareto_fronts_match_an_independent_computation(sweep):
    _, out, _ = sweep
    data = results(out)
    fronts = {(f["cost"], f["score"]): f["names"] for f in data["pareto"]}
    assert set(fronts) == {("size_mb", "wiki_ppl"), ("size_mb", "closed_book_pct")}
    rows = data["rows"]
    assert fronts[("size_mb", "wiki_ppl")] == staircase_front(rows, "size_mb", "wiki_ppl",
                                                              False)
    assert fronts[("size_mb", "closed_book_pct")] == staircase_front(
        rows, "size_mb", "closed_book_pct", True)
    # The smallest point is always on a front; the pruned fp32 artifact is the largest.
    smallest = min(rows, key=lambda r: r["size_mb"])["name"]
    assert fronts[("size_mb", "wiki_ppl")][0] == smallest


def test_reports_and_plots_are_written(sweep):
    _, out, result = sweep
    table = (out / "results.md").read_text()
    assert table in result.out
    assert all(f"| {name} |" in table for name in NAMES)
    page = (out / "report.html").read_text()
    for front in results(out)["pareto"]:
        png = out / front["plot"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert front["plot"] in page
    assert page.count("data:image/png;base64,") == 2
    assert not list(out.glob(".*.tmp"))


def test_a_rerun_reuses_every_finished_point(sweep, toolkit_cli):
    spec, out, _ = sweep
    before = {p: p.stat().st_mtime_ns for p in (out / "points").rglob("*") if p.is_file()}
    rows = results(out)["rows"]
    again = toolkit_cli("sweep", spec, "--out", out)
    assert again.code == 0, again.err
    assert again.out.count("finished earlier, reused") == 3 and "done in" not in again.out
    after = {p: p.stat().st_mtime_ns for p in (out / "points").rglob("*") if p.is_file()}
    assert after == before
    assert results(out)["rows"] == rows


def test_an_interrupted_sweep_resumes_only_unfinished_points(sweep, toolkit_cli, tmp_path):
    spec, original, _ = sweep
    out = tmp_path / "out"
    shutil.copytree(original, out)
    rows = rows_by_name(out)
    in_eval, in_compress, finished = (point_dir(out, rows[n]) for n in NAMES)
    # Killed during the evaluation: the artifact and compress.json are there.
    (in_eval / DONE).unlink()
    (in_eval / EVAL_FILE).unlink()
    # Killed during compression: no compress.json yet (a half-moved artifact may be left).
    for name in (DONE, EVAL_FILE, COMPRESS):
        (in_compress / name).unlink()
    stamp = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    compress_stamp = (in_eval / COMPRESS).stat().st_mtime_ns
    again = toolkit_cli("sweep", spec, "--out", out, "--jobs", "2", "--threads", "1")
    assert again.code == 0, again.err
    assert again.out.count("done in") == 2 and again.out.count("reused") == 1
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()} == stamp
    assert (in_eval / COMPRESS).stat().st_mtime_ns == compress_stamp  # not recompressed
    assert (in_compress / COMPRESS).is_file() and (in_compress / DONE).is_file()
    new_rows = rows_by_name(out)
    for name in NAMES:
        assert new_rows[name]["wiki_ppl"] == pytest.approx(rows[name]["wiki_ppl"], rel=1e-9)
        assert new_rows[name]["closed_book_pct"] == rows[name]["closed_book_pct"]


def test_budget_picks_the_brute_force_best_and_its_recipe_reruns(sweep, toolkit_cli, tmp_path):
    spec, original, _ = sweep
    out = tmp_path / "out"
    shutil.copytree(original, out)
    rows = results(out)["rows"]
    sizes = sorted(r["size_mb"] for r in rows)
    limit_kb = round(sizes[1] * 1000 + 1)  # the two smallest fit, the largest does not
    best = brute_force_best(rows, limit_kb / 1000)
    assert best is not None
    result = toolkit_cli("sweep", spec, "--out", out, "--budget", f"size={limit_kb}kB")
    assert result.code == 0, result.err
    assert f"best within size <= {limit_kb / 1000:g} MB: {best['name']} " in result.out
    recipe = out / f"best-size{limit_kb}kB.yaml"
    assert recipe.is_file()
    rerun = toolkit_cli("run", recipe, "--out", tmp_path / "rerun", "--no-eval", "--quiet")
    assert rerun.code == 0, rerun.err
    made = point_dir(out, best) / ARTIFACT
    for weights in made.glob("*.safetensors"):
        ours, theirs = load_file(weights), load_file(tmp_path / "rerun" / weights.name)
        assert ours.keys() == theirs.keys()
        assert all((ours[k] == theirs[k]).all() for k in ours)


def test_budget_nothing_fits_prints_the_closest(sweep, toolkit_cli, tmp_path):
    spec, original, _ = sweep
    out = tmp_path / "out"
    shutil.copytree(original, out)
    rows = results(out)["rows"]
    smallest = min(rows, key=lambda r: r["size_mb"])
    result = toolkit_cli("sweep", spec, "--out", out, "--budget", "size=1kB")
    assert result.code == 2
    assert len(result.err_lines) == 1
    over = smallest["size_mb"] - 0.001
    assert f"the closest is {smallest['name']}: size {smallest['size_mb']:.2f} MB, " \
           f"{over:.2f} MB" in result.err
    assert not list(out.glob("best-*.yaml"))


def test_model_flag_overrides_the_spec(sweep, toolkit_cli, tmp_path):
    _, original, _ = sweep
    out = tmp_path / "out"
    shutil.copytree(original, out)
    elsewhere = write_spec(tmp_path, {**SPEC, "model": "no-such-model"})
    refused = toolkit_cli("sweep", elsewhere, "--out", out)
    assert refused.code == 2 and "no-such-model is neither" in refused.err
    # The same recipes on the same model have the same keys: every point is reused.
    again = toolkit_cli("sweep", elsewhere, "--out", out, "--model", "fake-llama")
    assert again.code == 0, again.err
    assert again.out.count("reused") == 3
    assert {r["recipe"]["model"] for r in results(out)["rows"]} == {"fake-llama"}
