"""`toolkit bench`: runtime-agnostic latency measurement and its self-contained HTML report.

A model enters only as a `run_once()` callable, so the same timing code serves LiteRT,
ONNX Runtime, Core ML and PyTorch. `render_html` takes a plain dict:

    {"title": str, "environment": {str: str},
     "models": [{"name", "path", "runtime", "file_bytes", "load_seconds",
                 "first_inference_ms", "latency": TimingStats.to_dict(), "samples_ms",
                 "accuracy": {"max_abs_error", "cosine"} | None,
                 "llm": {"prefill_tokens_per_s", "decode_tokens_per_s",
                         "prompt_tokens", "new_tokens"} | None}]}
"""

from toolkit.bench.html_report import render_html
from toolkit.bench.timing import (
    TimingStats,
    first_call_seconds,
    measure,
    measure_interleaved,
    percentile,
)

__all__ = [
    "TimingStats",
    "first_call_seconds",
    "measure",
    "measure_interleaved",
    "percentile",
    "render_html",
]
