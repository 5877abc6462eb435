"""A small real sweep on fake-llama shared by the sweep tests, and independent
computations (Pareto front, budget pick) to check its results against."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

EVAL = {"windows": 2, "seq_len": 64, "kick_questions": 8, "mmlu_questions": 4}
SPEC = {
    "model": "fake-llama",
    "calibration": {"samples": 4, "seq_len": 64, "seed": 0},
    "eval": EVAL,
    "bench": {"runs": 5, "warmup": 1, "min_seconds": 0.2, "prompt_tokens": 16,
              "max_context": 64},
    "grid": {"stages": [{"vary": {"method": ["rtn", "gptq"]}, "bits": 4, "group_size": 32}]},
    "points": [{"name": "wanda50", "stages": [{"method": "wanda", "sparsity": 0.5}]}],
}
NAMES = ["rtn", "gptq", "wanda50"]


def write_spec(folder: Path, data: dict | None = None) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data or SPEC, sort_keys=False), encoding="utf-8")
    return path


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def staircase_front(rows: list[dict], cost: str, score: str, higher_better: bool) -> list[str]:
    """The Pareto front by a sort and a running best (not the pairwise test the toolkit
    uses): by increasing cost, ties by better score, a row is on the front when its score
    beats every cheaper row's."""
    sign = -1 if higher_better else 1
    usable = sorted((r for r in rows if not r.get("error") and r.get(cost) is not None),
                    key=lambda r: (r[cost], sign * r[score]))
    front, best = [], None
    for row in usable:
        value = sign * row[score]
        if best is None or value < best:
            front.append(row["name"])
            best = value
    return front


def brute_force_best(rows: list[dict], size_mb: float) -> dict | None:
    fits = [r for r in rows if r["size_mb"] <= size_mb]
    if not fits:
        return None
    best_ppl = min(r["wiki_ppl"] for r in fits)
    ties = [r for r in fits if r["wiki_ppl"] == best_ppl]
    return max(ties, key=lambda r: r["closed_book_pct"])
