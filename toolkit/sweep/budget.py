"""`--budget size=150MB,latency=40ms`: the best point inside a budget, as a recipe.

Best = the lowest Wikipedia perplexity among the points within every limit, ties broken
by the higher closed-book factoid accuracy. `size` is what a device downloads: the
exported file when the sweep ran with --bench (quantized embeddings and head included
when the spec's `bench: {embedding_bits: ...}` asks for them), else the artifact on disk
(whose embeddings stay float). When no point fits, the closest is the one
whose largest relative excess over a limit is smallest.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

from toolkit.errors import UserError

UNITS = {"size": {"kB": 1e-3, "KB": 1e-3, "MB": 1.0, "GB": 1e3},  # to MB (decimal)
         "latency": {"ms": 1.0, "s": 1e3}}  # to ms
COLUMNS = {"size": ("size_mb", "MB"), "latency": ("latency_ms", "ms")}


def value_of(row: dict[str, Any], kind: str) -> float | None:
    """The row's measure for a limit: size is the exported file's when there is one."""
    if kind == "size" and row.get("file_mb") is not None:
        return row["file_mb"]
    return row.get(COLUMNS[kind][0])
_ITEM = re.compile(r"^\s*([a-z]+)\s*=\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([A-Za-z]+)\s*$")
EXAMPLE = "e.g. --budget size=150MB,latency=40ms (size in kB/MB/GB, latency in ms/s)"


@dataclasses.dataclass(frozen=True)
class Budget:
    text: str
    limits: dict[str, float]  # "size" in MB, "latency" in ms

    @property
    def slug(self) -> str:
        """For the file name: size150MB-latency40ms."""
        return re.sub(r"[^A-Za-z0-9.]+", "-", self.text.replace("=", "")).strip("-")

    def describe(self) -> str:
        return ", ".join(f"{kind} <= {value:g} {COLUMNS[kind][1]}"
                         for kind, value in self.limits.items())


def parse_budget(text: str) -> Budget:
    limits: dict[str, float] = {}
    for item in text.split(","):
        match = _ITEM.match(item)
        if not match:
            raise UserError(f"--budget {text!r}: {item.strip()!r} is not KIND=NUMBER+UNIT: "
                            f"{EXAMPLE}")
        kind, number, unit = match.groups()
        if kind not in UNITS:
            raise UserError(f"--budget {text!r}: unknown limit {kind!r}: use size and/or "
                            f"latency ({EXAMPLE})")
        if unit not in UNITS[kind]:
            raise UserError(f"--budget {text!r}: {kind} takes the units "
                            f"{', '.join(UNITS[kind])}, not {unit!r}")
        if kind in limits:
            raise UserError(f"--budget {text!r}: {kind} is given twice: give each limit once")
        value = float(number) * UNITS[kind][unit]
        if not value > 0:
            raise UserError(f"--budget {text!r}: {kind} must be > 0")
        limits[kind] = value
    return Budget(text, limits)


def _candidates(rows: list[dict[str, Any]], budget: Budget) -> list[dict[str, Any]]:
    return [row for row in rows if not row.get("error") and row.get("wiki_ppl") is not None
            and all(value_of(row, kind) is not None for kind in budget.limits)]


def excess(row: dict[str, Any], budget: Budget) -> dict[str, float]:
    """kind -> how far over the limit, in the limit's unit (only the limits exceeded)."""
    over = {}
    for kind, limit in budget.limits.items():
        value = value_of(row, kind)
        if value > limit:
            over[kind] = value - limit
    return over


def best_within(rows: list[dict[str, Any]], budget: Budget) -> dict[str, Any] | None:
    inside = [row for row in _candidates(rows, budget) if not excess(row, budget)]
    if not inside:
        return None
    return min(inside, key=lambda r: (r["wiki_ppl"], -(r.get("closed_book_pct") or 0.0)))


def closest(rows: list[dict[str, Any]], budget: Budget) -> dict[str, Any] | None:
    candidates = _candidates(rows, budget)
    if not candidates:
        return None

    def worst_ratio(row: dict[str, Any]) -> float:
        return max(value_of(row, kind) / limit for kind, limit in budget.limits.items())

    return min(candidates, key=lambda r: (worst_ratio(r), r["wiki_ppl"]))


def over_text(row: dict[str, Any], budget: Budget) -> str:
    parts = []
    for kind, amount in excess(row, budget).items():
        limit, unit = budget.limits[kind], COLUMNS[kind][1]
        parts.append(f"{kind} {value_of(row, kind):.2f} {unit}, {amount:.2f} {unit} "
                     f"({100 * amount / limit:.1f}%) over")
    return "; ".join(parts)


def recipe_text(row: dict[str, Any], budget: Budget, spec: str) -> str:
    """The best point's recipe, re-runnable by `toolkit run`, with where it came from."""
    notes = [f"# The best point of `toolkit sweep {spec}` within {budget.describe()}:",
             f"#   {row['name']}: wiki ppl {row['wiki_ppl']:.3f}, "
             f"size {value_of(row, 'size'):.2f} MB"
             + (f", latency {row['latency_ms']:.3f} ms" if row.get("latency_ms") else ""),
             "#   toolkit run THIS.yaml --out DIR"]
    return "\n".join(notes) + "\n" + yaml.safe_dump(row["recipe"], sort_keys=False)
