"""benchmarks/sweep_recovery.py: a rerun sweep's row replaces the failed row of the same
name, the goals are decided on the merged rows (met or not, with the numbers), and the
section, plots and recipes are written from them; a rerun under another protocol is
refused."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmarks import sweep_recovery

HEADER = {"spec": "s.yaml", "model": "smollm2-135m",
          "calibration": {"samples": 32, "seq_len": 512, "seed": 0},
          "eval": {"windows": 16, "seq_len": 512, "kick_questions": 100},
          "bench": {"format": "onnx", "threads": 1, "runs": 20, "prompt_tokens": 64,
                    "embedding_bits": 8}}


def _row(name: str, mb: float, ppl: float, bits: float = 4.0,
         adapter: float | None = None) -> dict:
    stages = [] if name == "dense" else [{"method": m} for m in name.split("+")]
    return {"name": name, "key": name, "recipe": {"model": "smollm2-135m", "stages": stages},
            "size_mb": mb, "file_mb": mb, "weights_mb": mb, "bits_per_weight": bits,
            "adapter_bits_per_weight": adapter, "adapter_rank": 16 if adapter else None,
            "adapter_mb": None, "sparsity": None, "wiki_ppl": ppl, "news_ppl": ppl,
            "wiki_ppl_ci": [ppl - 1, ppl + 1], "news_ppl_ci": [ppl - 1, ppl + 1],
            "closed_book_pct": 30.0, "closed_book_ci_pct": [21.0, 40.0],
            "open_book_pct": 50.0, "open_book_ci_pct": [40.0, 60.0],
            "latency_ms": mb / 10, "compress_seconds": 1.0, "peak_rss_mb": 100.0}


def _write(folder, rows, **header) -> None:
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({**HEADER, **header, "rows": rows}))


def test_merge_replaces_by_name_keeps_order_and_marks_the_source():
    rows = [{"name": "a"}, {"name": "b", "error": "refused"}, {"name": "c"}]
    merged = sweep_recovery.merge_rows(rows, [{"name": "b", "wiki_ppl": 3.0},
                                              {"name": "d"}], "x.yaml")
    assert [r["name"] for r in merged] == ["a", "b", "c", "d"]
    assert merged[1] == {"name": "b", "wiki_ppl": 3.0, "from": "x.yaml"}
    assert "from" not in merged[0] and merged[3]["from"] == "x.yaml"


def test_main_writes_the_section_from_the_merged_rows(tmp_path, monkeypatch):
    main, rerun = tmp_path / "main", tmp_path / "rerun"
    _write(main, [_row("dense", 540, 20.0, 32.0), _row("rtn-4b-g64", 94, 26.0, 4.6),
                  _row("wanda50", 540, 40.0, 32.0),
                  {"name": "wanda50+lora", "key": "w", "recipe": {}, "error": "refused"}])
    _write(rerun, [_row("wanda50+lora", 545, 33.0, 32.0, 0.74)])
    monkeypatch.setattr(sweep_recovery, "ROOT", tmp_path)
    monkeypatch.setattr(sweep_recovery, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sweep_recovery, "FILES", tmp_path / "results" / "files")
    monkeypatch.setattr(sys, "argv", ["sweep_recovery", "--sweep", str(main), "--rerun",
                                      str(rerun)])
    assert sweep_recovery.main() == 0
    result = json.loads((tmp_path / "results" / "sweep_recovery.json").read_text())
    row = next(r for r in result["rows"] if r["name"] == "wanda50+lora")
    assert row["wiki_ppl"] == 33.0 and row["from"] == sweep_recovery.RERUN_SPEC
    goal = next(g for g in result["goals"] if g["goal"].startswith("wanda50+lora"))
    # 33 / 20 = 1.65x: not met, and the section says so with the number.
    assert goal["met"] is False and "ppl 33.00 = 1.65x dense 20.00" in goal["evidence"]
    assert "32.00 + 0.74 bits (LoRA r16)" in goal["evidence"]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| wanda50+lora | 545.00 |" in text and "failed" not in text
    assert f"Rerun alone with `{sweep_recovery.RERUN_SPEC}`" in text
    assert "| wanda50+lora: perplexity at most 1.5x dense | **no** |" in text
    for plot in result["plots"]:
        assert (tmp_path / "results" / "files" / plot).read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_under_another_protocol_is_refused(tmp_path, monkeypatch):
    main, rerun = tmp_path / "main", tmp_path / "rerun"
    _write(main, [_row("dense", 540, 20.0)])
    _write(rerun, [_row("wanda50+lora", 545, 33.0)], eval={"windows": 2})
    monkeypatch.setattr(sys, "argv", ["sweep_recovery", "--sweep", str(main), "--rerun",
                                      str(rerun)])
    with pytest.raises(SystemExit, match="its eval differs"):
        sweep_recovery.main()


def test_finished_rows_are_read_again_from_their_point_folders(tmp_path):
    from tests.toolkit.sweep.test_rows import fake_point

    sweep = tmp_path / "sweep"
    (sweep / "points").mkdir(parents=True)
    point = fake_point(sweep / "points", {"quantization": {"bits_per_weight": 2.5}},
                       {"w": torch.zeros(4, 4)})
    point.directory.rename(sweep / "points" / "k")
    stale = {"name": "p", "key": "k", "recipe": point.recipe, "bits_per_weight": 9.0}
    failed = {"name": "f", "key": "gone", "recipe": {}, "error": "refused"}
    rows = sweep_recovery.reread_rows(sweep, {"bench": None, "rows": [stale, failed]})
    assert rows[0]["bits_per_weight"] == 2.5 and rows[0]["wiki_ppl"] == 20.0
    assert rows[1] == failed


def test_from_saved_appends_an_added_sweep_and_decides_its_rotation_goal(tmp_path,
                                                                          monkeypatch):
    """The first sweep's folder is gone: its rows come from the saved results, the added
    sweep's row is appended (marked with its spec), the goal is decided on it, and running
    again does not append it twice."""
    results = tmp_path / "results"
    results.mkdir()
    dense = {**_row("dense", 540, 20.0, 32.0), "closed_book_pct": 52.0,
             "closed_book_ci_pct": [42.0, 62.0]}
    saved = {**HEADER, "rerun": None, "environment": {"cpu": "cpu", "date": "2026-12-04"},
             "rows": [dense, _row("rtn-4b-g64", 94, 26.0, 4.6)]}
    (results / "sweep_recovery.json").write_text(json.dumps(saved))
    added = tmp_path / "added"
    name = "rotate+gptq-4b-g64+lora-1600w"
    _write(added, [{**_row(name, 146, 21.5, 4.31, 0.74), "closed_book_pct": 50.0}])
    monkeypatch.setattr(sweep_recovery, "ROOT", tmp_path)
    monkeypatch.setattr(sweep_recovery, "RESULTS", results)
    monkeypatch.setattr(sweep_recovery, "FILES", results / "files")
    monkeypatch.setattr(sys, "argv", ["sweep_recovery", "--from-saved", "--added", str(added),
                                      "--sweep", str(tmp_path / "gone")])
    for _ in range(2):
        assert sweep_recovery.main() == 0
        result = json.loads((results / "sweep_recovery.json").read_text())
        assert [r["name"] for r in result["rows"]] == ["dense", "rtn-4b-g64", name]
    assert result["rows"][2]["from"] == sweep_recovery.ADDED_SPEC
    assert result["environment"]["cpu"] == "cpu"
    goal = next(g for g in result["goals"] if g["goal"].startswith(name))
    # 21.5 / 20 = 1.075x and 50% inside [42-62]: met, with the numbers and the source.
    assert goal["met"] is True and "ppl 21.50 = 1.075x dense 20.00" in goal["evidence"]
    assert sweep_recovery.ADDED_SPEC in goal["evidence"]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert f"Added from `{sweep_recovery.ADDED_SPEC}`" in text and "run folder is gone" in text
    assert f"| {name}: perplexity within 10% of dense and closed-book within the dense " \
           "interval | yes |" in text
