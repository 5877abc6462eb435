"""Pareto fronts of a sweep and their plots.

A point is on the front of (cost, score) when no other point costs no more and scores no
worse, and is strictly better in one of the two. Costs: size on disk, and with --bench
the exported file's size and the latency. Scores: Wikipedia perplexity (lower is better)
and closed-book factoid accuracy (higher is better; perplexity can hide lost knowledge,
arXiv 2310.01382).
"""

from __future__ import annotations

import dataclasses
import io
import os
import uuid
from pathlib import Path
from typing import Any

COSTS = {"size_mb": ("size", "size on disk (MB)"),
         "file_mb": ("file", "exported file, what a device downloads (MB)"),
         "latency_ms": ("latency", "decode latency p50 (ms)")}
SCORES = {"wiki_ppl": ("wiki-ppl", "Wikipedia perplexity (lower is better)", False),
          "closed_book_pct": ("closed-book", "closed-book factoid % (higher is better)", True)}
INTERVALS = {"wiki_ppl": "wiki_ppl_ci", "closed_book_pct": "closed_book_ci_pct"}


@dataclasses.dataclass(frozen=True)
class Front:
    cost: str
    score: str
    names: list[str]  # on the front, by increasing cost
    plot: str  # the PNG's file name

    @property
    def title(self) -> str:
        return f"{SCORES[self.score][1].split(' (')[0]} vs {COSTS[self.cost][0]}"


def _usable(row: dict[str, Any], cost: str, score: str) -> bool:
    return not row.get("error") and isinstance(row.get(cost), int | float) \
        and isinstance(row.get(score), int | float)


def pareto_front(rows: list[dict[str, Any]], cost: str, score: str,
                 higher_better: bool) -> list[str]:
    """Names of the rows on the front, by increasing cost."""
    sign = -1.0 if higher_better else 1.0  # compare "lower is better" throughout
    candidates = [row for row in rows if _usable(row, cost, score)]

    def dominates(q: dict, p: dict) -> bool:
        qc, pc, qs, ps = q[cost], p[cost], sign * q[score], sign * p[score]
        return qc <= pc and qs <= ps and (qc < pc or qs < ps)

    front = [p for p in candidates if not any(dominates(q, p) for q in candidates)]
    return [row["name"] for row in sorted(front, key=lambda r: (r[cost], sign * r[score]))]


def fronts(rows: list[dict[str, Any]]) -> list[Front]:
    """Every (cost, score) pair that has at least one usable row."""
    found = []
    for cost, (cost_slug, _) in COSTS.items():
        for score, (score_slug, _, higher) in SCORES.items():
            if any(_usable(row, cost, score) for row in rows):
                found.append(Front(cost, score, pareto_front(rows, cost, score, higher),
                                   f"pareto-{score_slug}-vs-{cost_slug}.png"))
    return found


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def plot_png(rows: list[dict[str, Any]], front: Front, title: str) -> bytes:
    """Every usable point with its 95% interval, the front joined and labelled."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    from matplotlib import pyplot as plt

    usable = [row for row in rows if _usable(row, front.cost, front.score)]
    on_front = set(front.names)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        for row in usable:
            interval = row.get(INTERVALS[front.score])
            x, y = row[front.cost], row[front.score]
            yerr = None
            if interval and None not in interval:
                yerr = [[max(y - interval[0], 0)], [max(interval[1] - y, 0)]]
            color = "tab:red" if row["name"] in on_front else "tab:gray"
            ax.errorbar([x], [y], yerr=yerr, fmt="o", color=color, ecolor=color,
                        alpha=0.9 if row["name"] in on_front else 0.6, capsize=3)
            ax.annotate(row["name"], (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=7)
        by_name = {row["name"]: row for row in usable}
        line = [by_name[name] for name in front.names]
        ax.plot([r[front.cost] for r in line], [r[front.score] for r in line], "-",
                color="tab:red", linewidth=1, label="Pareto front")
        values = [row[front.score] for row in usable]
        if front.score == "wiki_ppl" and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.set_xlabel(COSTS[front.cost][1])
        ax.set_ylabel(SCORES[front.score][1])
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", metadata={"Software": None})
        return buffer.getvalue()
    finally:
        plt.close(fig)
