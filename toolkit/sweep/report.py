"""What a sweep writes under --out, each file atomically:

    results.json   {"spec", "model", "eval", "bench", "rows": [...], "pareto": [...]}
                   one row per point (toolkit/sweep/rows.py): name, recipe, size_mb,
                   bits_per_weight (+ adapter_bits_per_weight, adapter_mb, adapter_rank),
                   wiki_ppl and news_ppl with *_ci, closed_book_pct / open_book_pct / mmlu_pct with
                   *_ci_pct (95% Wilson), latency_ms (with --bench), compress_seconds,
                   compress_wall_seconds, peak_rss_mb; a failed point has `error`
    results.md     the table printed at the end
    pareto-*.png   accuracy vs size (and vs latency when benched), the front in red
    report.html    the table and the plots (embedded), the fronts listed
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from toolkit.data.cache import write_text_atomic
from toolkit.sweep.pareto import Front, fronts, plot_png, write_bytes_atomic

FRONT_NOTE = ("front: the Pareto fronts the point is on (wiki = Wikipedia perplexity, closed = "
              "closed-book factoid accuracy; against size, and latency with --bench)")
HEADERS = ["point", "MB", "file MB", "bits/w", "wiki ppl", "news ppl", "closed-book % [95%]",
           "open-book % [95%]", "p50 ms", "compress s", "peak RSS MB", "front"]


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(row: dict, column: str) -> str:
    value, interval = row.get(f"{column}_pct"), row.get(f"{column}_ci_pct")
    if value is None:
        return "-"
    return f"{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]"


def _bits(row: dict) -> str:
    text = _num(row.get("bits_per_weight"))
    if row.get("adapter_bits_per_weight") is not None:
        text += f" + {row['adapter_bits_per_weight']:.2f} (LoRA r{row['adapter_rank']})"
    return text


def table_cells(rows: list[dict], found: list[Front]) -> list[list[str]]:
    marks = {row["name"]: [] for row in rows}
    for front in found:
        for name in front.names:
            marks[name].append(f"{front.score.split('_')[0]}/{front.cost.split('_')[0]}")
    cells = []
    for row in rows:
        if row.get("error"):
            cells.append([row["name"], "failed: " + row["error"]] + [""] * (len(HEADERS) - 2))
            continue
        cells.append([row["name"], _num(row["size_mb"]), _num(row.get("file_mb")), _bits(row),
                      _num(row["wiki_ppl"]),
                      _num(row["news_ppl"]), _pct(row, "closed_book"), _pct(row, "open_book"),
                      _num(row["latency_ms"], 3), _num(row["compress_seconds"], 1),
                      _num(row["peak_rss_mb"], 0), " ".join(marks[row["name"]]) or "-"])
    return cells


def markdown_table(rows: list[dict], found: list[Front]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
              for cells in table_cells(rows, found)]
    return "\n".join(lines) + "\n\n" + FRONT_NOTE + "\n"


def write_reports(out: Path, header: dict[str, Any], rows: list[dict]) -> str:
    """Write every report file; return the markdown table."""
    found = fronts(rows)
    pngs = {}
    for front in found:
        pngs[front.plot] = plot_png(rows, front, f"{front.title}: {header['model']}")
        write_bytes_atomic(out / front.plot, pngs[front.plot])
    results = {**header, "rows": rows,
               "pareto": [{"cost": f.cost, "score": f.score, "names": f.names,
                           "plot": f.plot} for f in found]}
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    table = markdown_table(rows, found)
    write_text_atomic(out / "results.md", table)
    write_text_atomic(out / "report.html", _html(header, rows, found, pngs))
    return table


def _html(header: dict, rows: list[dict], found: list[Front], pngs: dict[str, bytes]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
                   for cells in table_cells(rows, found))
    figures = "".join(
        f"<figure><img alt='{esc(f.title)}' src='data:image/png;base64,"
        f"{base64.b64encode(pngs[f.plot]).decode()}'><figcaption>{esc(f.title)}; "
        f"front: {esc(', '.join(f.names))} ({esc(f.plot)})</figcaption></figure>"
        for f in found)
    protocol = esc(json.dumps(header.get("eval", {})))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep: {esc(str(header['spec']))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
figure{{display:inline-block;margin:1em}}img{{max-width:700px}}</style></head>
<body><h1>Sweep {esc(str(header['spec']))}</h1>
<p>model: {esc(str(header['model']))}; evaluation: {protocol}</p>
<table><tr>{head}</tr>{body}</table>
{figures}
</body></html>
"""
