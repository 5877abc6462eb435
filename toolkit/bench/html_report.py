"""One self-contained HTML page for a `toolkit bench` report: tables plus an inline SVG plot.

Nothing is loaded from outside the page (no JS, CSS or fonts from a CDN): the report is
opened on offline machines and mailed around as one file. Every string that came from the
user (titles, model names, paths, environment values) goes through `html.escape`.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from toolkit.bench.timing import percentile

MISSING = "—"
# A strip with 100k dots makes a page of many megabytes that browsers crawl over; past
# this many, an even stride over the sorted samples keeps the shape of the distribution.
MAX_DOTS_PER_MODEL = 2000
PLOT_WIDTH, LABEL_WIDTH, RIGHT_PAD, ROW_HEIGHT, TOP_PAD, AXIS_HEIGHT = 900, 190, 30, 46, 12, 44
BOX_HALF_HEIGHT, JITTER_HALF_HEIGHT = 9.0, 12.0

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
.note { color: #666; font-size: 12px; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
"""

MODEL_COLUMNS = (
    "model", "runtime", "size (MB)", "load (ms)", "first inference (ms)", "p50 (ms)",
    "p90 (ms)", "p99 (ms)", "mean ± std (ms)", "p50 ratio", "max abs error", "cosine",
    "prefill (tok/s)", "decode (tok/s)",
)


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page for `report` (shape documented in `toolkit.bench`)."""
    title = _esc(report.get("title") or "toolkit bench")
    models = list(report.get("models") or [])
    environment = report.get("environment") or {}
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{STYLE}</style></head><body>",
        f"<h1>{title}</h1>",
        "<h2>Environment</h2>", environment_table(environment),
        "<h2>Latency</h2>", models_table(models),
        '<p class="note">p50 ratio: each model\'s median latency divided by the first '
        "model's. First inference is the first call after loading, timed alone: it pays "
        "one-time costs that the warm-up runs keep out of the percentiles.</p>",
        "<h2>Latency distribution</h2>", latency_svg(models),
        '<p class="note">Whiskers p1..p99 (min..max where raw samples are missing), box '
        "p25..p75, red line at the median, one dot per timed run.</p>",
        "</body></html>",
    ])


def environment_table(environment: Mapping[str, Any]) -> str:
    """Two-column table of the machine and runtime versions the numbers were taken on."""
    rows = "".join(f'<tr><th class="text">{_esc(key)}</th><td class="text">{_esc(value)}</td></tr>'
                   for key, value in environment.items())
    return f'<table class="environment">{rows}</table>'


def models_table(models: Sequence[Mapping[str, Any]]) -> str:
    """One row per model; the ratio column compares each p50 with the first model's."""
    header = "".join(f"<th>{_esc(column)}</th>" for column in MODEL_COLUMNS)
    baseline = _latency(models[0]).get("p50_ms") if models else None
    rows = "".join(model_row(model, baseline) for model in models)
    return f'<table class="models"><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>'


def model_row(model: Mapping[str, Any], baseline_p50_ms: float | None) -> str:
    """The `<tr>` of one model; missing numbers show as an em dash."""
    latency = _latency(model)
    accuracy = model.get("accuracy") or {}
    llm = model.get("llm") or {}
    file_bytes = model.get("file_bytes")
    load_seconds = model.get("load_seconds")
    numbers = [
        _num(None if file_bytes is None else file_bytes / 1e6, ".2f"),  # MB = 10^6 bytes
        _ms(None if load_seconds is None else load_seconds * 1000.0),
        _ms(model.get("first_inference_ms")),
        _ms(latency.get("p50_ms")), _ms(latency.get("p90_ms")), _ms(latency.get("p99_ms")),
        _mean_std(latency), _ratio(latency.get("p50_ms"), baseline_p50_ms),
        _num(accuracy.get("max_abs_error"), ".3g"), _num(accuracy.get("cosine"), ".6f"),
        _num(llm.get("prefill_tokens_per_s"), ".1f"), _num(llm.get("decode_tokens_per_s"), ".1f"),
    ]
    name = (f'<td class="text" title="{_esc(model.get("path", ""))}">'
            f'{_esc(model.get("name", ""))}</td>')
    runtime = f'<td class="text">{_esc(model.get("runtime", ""))}</td>'
    cells = "".join(f"<td>{_esc(value)}</td>" for value in numbers)
    return f'<tr class="model-row">{name}{runtime}{cells}</tr>'


@dataclasses.dataclass(frozen=True)
class StripSummary:
    """What one strip of the plot draws, in ms; `q1`/`q3` are None without raw samples."""

    low: float
    high: float
    median: float
    q1: float | None
    q3: float | None
    dots: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Axis:
    """Linear map from milliseconds to SVG x, with the tick positions it labels."""

    low: float
    high: float
    ticks: tuple[float, ...]
    step: float

    def x(self, value_ms: float) -> float:
        span = PLOT_WIDTH - LABEL_WIDTH - RIGHT_PAD
        return LABEL_WIDTH + (value_ms - self.low) / (self.high - self.low) * span


def latency_svg(models: Sequence[Mapping[str, Any]]) -> str:
    """Inline SVG: one horizontal strip per model on one shared millisecond axis."""
    summaries = [strip_summary(model) for model in models]
    drawn = [(model, s) for model, s in zip(models, summaries, strict=True) if s is not None]
    if not drawn:
        return '<p class="note">No latency samples to plot.</p>'
    values = [v for _, s in drawn for v in (s.low, s.high, *s.dots)]
    axis = nice_axis(min(values), max(values))
    height = TOP_PAD + ROW_HEIGHT * len(drawn) + AXIS_HEIGHT
    strips = "".join(svg_strip(model, summary, index, axis)
                     for index, (model, summary) in enumerate(drawn))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{height}" '
            f'viewBox="0 0 {PLOT_WIDTH} {height}" role="img">'
            f"{strips}{svg_axis(axis, TOP_PAD + ROW_HEIGHT * len(drawn))}</svg>")


def strip_summary(model: Mapping[str, Any]) -> StripSummary | None:
    """Percentiles from `samples_ms`; without samples, min/max/p50 from the latency dict."""
    samples = sorted(float(v) for v in model.get("samples_ms") or [])
    if samples:
        stride = max(1, math.ceil(len(samples) / MAX_DOTS_PER_MODEL))
        return StripSummary(
            low=percentile(samples, 1.0), high=percentile(samples, 99.0),
            median=percentile(samples, 50.0), q1=percentile(samples, 25.0),
            q3=percentile(samples, 75.0), dots=tuple(samples[::stride]),
        )
    latency = _latency(model)
    if any(latency.get(key) is None for key in ("min_ms", "max_ms", "p50_ms")):
        return None
    return StripSummary(low=latency["min_ms"], high=latency["max_ms"],
                        median=latency["p50_ms"], q1=None, q3=None, dots=())


def svg_strip(model: Mapping[str, Any], summary: StripSummary, index: int, axis: Axis) -> str:
    """One model's strip: label, whisker, box, median line and the sample dots."""
    y = TOP_PAD + ROW_HEIGHT * index + ROW_HEIGHT / 2
    name = str(model.get("name", ""))
    label = name if len(name) <= 26 else name[:25] + "…"
    tooltip = (f"{name}: p50 {_ms(summary.median)} ms, "
               f"whiskers {_ms(summary.low)}..{_ms(summary.high)} ms")
    parts = [
        f"<title>{_esc(tooltip)}</title>",
        f'<text x="{LABEL_WIDTH - 10}" y="{y + 4:.1f}" text-anchor="end">{_esc(label)}</text>',
        svg_whisker(axis.x(summary.low), axis.x(summary.high), y),
    ]
    if summary.q1 is not None and summary.q3 is not None:
        parts.append(svg_box(axis.x(summary.q1), axis.x(summary.q3), y))
    parts.append(svg_dots([axis.x(v) for v in summary.dots], y))
    x_median = axis.x(summary.median)
    parts.append(f'<line x1="{x_median:.2f}" x2="{x_median:.2f}" y1="{y - BOX_HALF_HEIGHT:.1f}" '
                 f'y2="{y + BOX_HALF_HEIGHT:.1f}" stroke="#c0392b" stroke-width="2.5"/>')
    return f'<g class="strip">{"".join(parts)}</g>'


def svg_whisker(x_low: float, x_high: float, y: float) -> str:
    """Horizontal line with end caps from x_low to x_high."""
    cap = BOX_HALF_HEIGHT / 2
    return (f'<path d="M{x_low:.2f},{y:.1f}H{x_high:.2f}M{x_low:.2f},{y - cap:.1f}V{y + cap:.1f}'
            f'M{x_high:.2f},{y - cap:.1f}V{y + cap:.1f}" stroke="#555" fill="none"/>')


def svg_box(x_q1: float, x_q3: float, y: float) -> str:
    """The interquartile box; at least 1 px wide so a tight distribution stays visible."""
    width = max(x_q3 - x_q1, 1.0)
    return (f'<rect x="{x_q1:.2f}" y="{y - BOX_HALF_HEIGHT:.1f}" width="{width:.2f}" '
            f'height="{2 * BOX_HALF_HEIGHT:.1f}" fill="#aed6f1" fill-opacity="0.6" '
            'stroke="#2471a3"/>')


def svg_dots(xs: Sequence[float], y: float) -> str:
    """Semi-transparent dots, spread vertically so equal latencies do not hide each other.

    The spread uses the golden-ratio sequence instead of random numbers, so the same
    report always renders the same page (diffable, cacheable)."""
    circles = []
    for i, x in enumerate(xs):
        offset = ((i * 0.6180339887) % 1.0 - 0.5) * 2 * JITTER_HALF_HEIGHT
        circles.append(f'<circle cx="{x:.2f}" cy="{y + offset:.1f}" r="2"/>')
    return f'<g fill="#1a5276" fill-opacity="0.3">{"".join(circles)}</g>'


def svg_axis(axis: Axis, y: float) -> str:
    """The shared ms axis: a base line, tick marks and their labels."""
    decimals = max(0, -math.floor(math.log10(axis.step)))
    parts = [f'<line x1="{axis.x(axis.low):.2f}" x2="{axis.x(axis.high):.2f}" y1="{y}" '
             f'y2="{y}" stroke="#333"/>']
    for tick in axis.ticks:
        x = axis.x(tick)
        parts.append(f'<line x1="{x:.2f}" x2="{x:.2f}" y1="{y}" y2="{y + 5}" stroke="#333"/>'
                     f'<text x="{x:.2f}" y="{y + 18}" text-anchor="middle">{tick:.{decimals}f}'
                     "</text>")
    parts.append(f'<text x="{(axis.x(axis.low) + axis.x(axis.high)) / 2:.2f}" y="{y + 36}" '
                 'text-anchor="middle">latency (ms)</text>')
    return f'<g class="axis">{"".join(parts)}</g>'


def nice_axis(low: float, high: float, target_ticks: int = 6) -> Axis:
    """An axis covering [low, high] whose ticks fall on 1, 2 or 5 times a power of ten."""
    if high - low <= 1e-12 * max(abs(low), abs(high), 1.0):
        pad = max(abs(low) * 0.05, 1e-3)  # one value only: give it room on both sides
        low, high = low - pad, high + pad
    raw_step = (high - low) / target_ticks
    magnitude = 10.0 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    first, last = math.floor(low / step), math.ceil(high / step)
    ticks = tuple(i * step for i in range(first, last + 1))
    return Axis(low=ticks[0], high=ticks[-1], ticks=ticks, step=step)


def _latency(model: Mapping[str, Any]) -> Mapping[str, float]:
    return model.get("latency") or {}


def _esc(value: object) -> str:
    return html.escape(str(value))


def _num(value: float | None, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def _ms(value: float | None) -> str:
    """Milliseconds with about four significant digits, without scientific notation."""
    if value is None:
        return MISSING
    decimals = 3 if abs(value) < 10 else 2 if abs(value) < 1000 else 0
    return f"{value:.{decimals}f}"


def _mean_std(latency: Mapping[str, float]) -> str:
    mean, std = latency.get("mean_ms"), latency.get("std_ms")
    return MISSING if mean is None or std is None else f"{_ms(mean)} ± {_ms(std)}"


def _ratio(p50_ms: float | None, baseline_p50_ms: float | None) -> str:
    if p50_ms is None or not baseline_p50_ms:
        return MISSING
    return f"{p50_ms / baseline_p50_ms:.2f}×"
