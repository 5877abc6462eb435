"""Knowledge-suite results as tables: one model, or compressed models beside their dense
model, flagged where perplexity hides damage.

LLM-KICK (Jaiswal et al., arXiv 2310.01382) shows compressed LLMs that keep their
perplexity while losing knowledge. A compressed model is flagged "perplexity hides damage"
when both hold:

    knowledge dropped:  acc_dense > high_model   (the dense model's closed-book factoid
                        accuracy lies above the compressed model's 95 % Wilson interval)
    perplexity steady:  |ppl_model / ppl_dense - 1| < 10 %  on every perplexity stream

A knowledge drop with a perplexity change of 10 % or more is flagged "knowledge drop":
there perplexity shows the damage too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from toolkit.eval.kick import SCORE_LABELS, KickResult, Score
from toolkit.report import format_table

KNOWLEDGE = "factoid_closed_book"
PERPLEXITIES = ("ppl_wikipedia", "ppl_news")
PPL_TOLERANCE = 0.10
HIDES_DAMAGE = "perplexity hides damage"
KNOWLEDGE_DROP = "knowledge drop"


@dataclasses.dataclass
class CompareEntry:
    label: str  # what the user passed (directory or model name)
    result: KickResult
    dense: str | None = None  # the label of its dense model; None for a dense model


def score_cell(score: Score) -> str:
    """"0.42 [0.35, 0.49]" for an accuracy, "21.04 [18.40, 23.93]" for a perplexity."""
    return f"{score.value:.2f} [{score.low:.2f}, {score.high:.2f}]"


def kick_table(result: KickResult) -> str:
    """One model's scores, intervals, sample sizes and notes."""
    rows = []
    for name, score in result.scores.items():
        size = f"{score.n} windows" if score.kind == "perplexity" else (
            f"{score.correct}/{score.n}")
        rows.append([SCORE_LABELS.get(name, name), f"{score.value:.4g}",
                     f"[{score.low:.4g}, {score.high:.4g}]", size, score.note])
    lines = [format_table(["score", "value", "95% interval", "n", "note"], rows)]
    for mode in ("factoid_closed_book", "factoid_open_book"):
        counts = result.sections.get(mode, {})
        parts = [f"{section} {c['correct']}/{c['n']}" for section, c in counts.items()]
        if parts:
            lines.append(f"{mode.replace('_', ' ')} by section: " + ", ".join(parts))
    return "\n".join(lines)


def perplexity_changes(dense: KickResult, model: KickResult) -> dict[str, float]:
    """Relative perplexity change per stream: ppl_model / ppl_dense - 1."""
    return {name: model.scores[name].value / dense.scores[name].value - 1
            for name in PERPLEXITIES if name in model.scores and name in dense.scores}


def knowledge_dropped(dense: KickResult, model: KickResult) -> bool:
    return dense.scores[KNOWLEDGE].value > model.scores[KNOWLEDGE].high


def damage_flag(dense: KickResult, model: KickResult,
                tolerance: float = PPL_TOLERANCE) -> str:
    """HIDES_DAMAGE, KNOWLEDGE_DROP, or "" (see the module docstring)."""
    if not knowledge_dropped(dense, model):
        return ""
    changes = perplexity_changes(dense, model)
    steady = bool(changes) and all(abs(c) < tolerance for c in changes.values())
    return HIDES_DAMAGE if steady else KNOWLEDGE_DROP


def compare_rows(entries: list[CompareEntry]) -> list[dict[str, Any]]:
    """One dict per entry: label, dense label, scores, perplexity changes, flag."""
    by_label = {entry.label: entry for entry in entries}
    rows = []
    for entry in entries:
        dense = by_label[entry.dense].result if entry.dense else None
        rows.append({
            "model": entry.label, "dense": entry.dense,
            "scores": {k: dataclasses.asdict(v) for k, v in entry.result.scores.items()},
            "ppl_change": perplexity_changes(dense, entry.result) if dense else {},
            "knowledge_dropped": knowledge_dropped(dense, entry.result) if dense else False,
            "flag": damage_flag(dense, entry.result) if dense else "",
        })
    return rows


def compare_table(entries: list[CompareEntry]) -> str:
    """Every model side by side; each compressed row shows its perplexity change."""
    headers = ["model", "vs", "closed-book", "open-book", "MMLU", "wiki ppl", "news ppl",
               "flag"]
    table = []
    for entry, row in zip(entries, compare_rows(entries), strict=True):
        cells = [row["model"], row["dense"] or "(dense)"]
        scores = entry.result.scores
        for name in ("factoid_closed_book", "factoid_open_book", "mmlu", *PERPLEXITIES):
            cell = score_cell(scores[name]) if name in scores else "-"
            if name in row["ppl_change"]:
                cell += f" {row['ppl_change'][name]:+.1%}"
            cells.append(cell)
        cells.append(row["flag"].upper() if row["flag"] == HIDES_DAMAGE else row["flag"])
        table.append(cells)
    notes = [f"flag: {HIDES_DAMAGE} = closed-book accuracy of the dense model above this "
             f"model's 95% interval while every perplexity moved less than "
             f"{PPL_TOLERANCE:.0%}; {KNOWLEDGE_DROP} = the same drop, perplexity moved too"]
    return "\n".join([format_table(headers, table), "", *notes])
