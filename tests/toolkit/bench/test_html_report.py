"""The HTML report: one row and one SVG strip per model, ratios, missing values, escaping."""

from __future__ import annotations

import html.parser
import re

import pytest

from toolkit.bench.html_report import nice_axis, render_html, strip_summary
from toolkit.bench.timing import TimingStats


def model(name: str, samples_ms: list[float], *, accuracy=None, llm=None) -> dict:
    stats = TimingStats.from_seconds([v / 1000.0 for v in samples_ms])
    return {
        "name": name, "path": f"/runs/{name}.tflite", "runtime": "litert",
        "file_bytes": 12_345_678, "load_seconds": 0.0421, "first_inference_ms": 31.5,
        "latency": stats.to_dict(), "samples_ms": samples_ms, "accuracy": accuracy, "llm": llm,
    }


def report() -> dict:
    base = model("base", [10.0, 11.0, 12.0, 10.5, 30.0],
                 accuracy={"max_abs_error": 0.0, "cosine": 1.0},
                 llm={"prefill_tokens_per_s": 812.25, "decode_tokens_per_s": 41.5,
                      "prompt_tokens": 128, "new_tokens": 64})
    pruned = model("pruned <script>alert(1)</script>", [30.0, 33.0, 36.0],
                   accuracy={"max_abs_error": 0.0123, "cosine": None})
    quant = model("int8", [5.5, 5.0, 5.25, 6.0], accuracy=None)
    return {"title": "bench & <b>report</b>",
            "environment": {"cpu": "2 x <shared>", "python": "3.11"},
            "models": [base, pruned, quant]}


def model_rows(page: str) -> list[list[str]]:
    """Cell texts of each model row, as a browser would show them (entities decoded)."""

    class Rows(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.in_cell = False

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and ("class", "model-row") in attrs:
                self.rows.append([])
            elif tag == "td" and self.rows:
                self.rows[-1].append("")
                self.in_cell = True

        def handle_endtag(self, tag):
            if tag == "td":
                self.in_cell = False

        def handle_data(self, data):
            if self.in_cell:
                self.rows[-1][-1] += data

    parser = Rows()
    parser.feed(page)
    return parser.rows


def test_one_row_and_one_strip_per_model():
    page = render_html(report())
    rows = model_rows(page)
    assert len(rows) == 3 and all(len(r) == 14 for r in rows)
    assert page.count('<g class="strip">') == 3
    assert page.count("<svg") == 1 and page.count("<circle") == 5 + 3 + 4


def test_row_values_and_ratio_column():
    base, pruned, quant = model_rows(render_html(report()))
    assert base[:2] == ["base", "litert"]
    assert base[2] == "12.35" and base[3] == "42.10" and base[4] == "31.50"
    assert base[5] == "11.00"  # median of 10, 10.5, 11, 12, 30
    assert base[9] == "1.00×" and pruned[9] == "3.00×" and quant[9] == "0.49×"  # 5.375 / 11
    assert base[12:] == ["812.2", "41.5"]


def test_missing_accuracy_and_llm_show_a_dash():
    base, pruned, quant = model_rows(render_html(report()))
    assert quant[10:] == ["—"] * 4
    assert pruned[10] == "0.0123" and pruned[11] == "—" and pruned[12:] == ["—"] * 2
    assert base[10:12] == ["0", "1.000000"]


def test_user_strings_are_escaped():
    page = render_html(report())
    assert "<script>" not in page and "<b>report</b>" not in page and "<shared>" not in page
    assert "pruned &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "bench &amp; &lt;b&gt;report&lt;/b&gt;" in page
    assert model_rows(page)[1][0] == "pruned <script>alert(1)</script>"


def test_page_is_self_contained():
    page = render_html(report())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page


def test_strip_summary_uses_sample_percentiles():
    summary = strip_summary(model("m", [float(v) for v in range(1, 102)]))
    assert (summary.low, summary.q1, summary.median, summary.q3, summary.high) == pytest.approx(
        (2.0, 26.0, 51.0, 76.0, 100.0))
    assert len(summary.dots) == 101


def test_strip_without_samples_falls_back_to_min_max():
    m = model("m", [1.0, 2.0, 9.0])
    m["samples_ms"] = []
    summary = strip_summary(m)
    assert (summary.low, summary.median, summary.high, summary.q1) == (1.0, 2.0, 9.0, None)
    assert '<g class="strip">' in render_html({"title": "t", "environment": {}, "models": [m]})


def test_axis_ticks_are_round_and_cover_the_data():
    axis = nice_axis(4.2, 31.7)
    assert axis.step == 5.0 and axis.ticks[0] == 0.0 and axis.ticks[-1] == 35.0
    assert axis.x(axis.low) < axis.x(20.0) < axis.x(axis.high)
    flat = nice_axis(5.0, 5.0)
    assert flat.low < 5.0 < flat.high


def test_empty_report_still_renders():
    page = render_html({"title": "empty", "environment": {}, "models": []})
    assert "No latency samples" in page and model_rows(page) == []
