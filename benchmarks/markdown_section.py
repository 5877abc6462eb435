"""Regenerate one marked section of a Markdown file, leaving the rest untouched."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def replace_section(path: Path, key: str, body: str) -> None:
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def run_or_render(render_only: bool, results: Path, markdown_path: Path, section: str,
                  run: Callable[[], dict], markdown: Callable[[dict], str]) -> str:
    """A benchmark's last step: `run()` and keep its data in `results` or, with
    `render_only`, read that data back; then `markdown(data)` into `section` of
    `markdown_path` (BENCHMARKS.md). Returns the section's text."""
    data = json.loads(results.read_text()) if render_only else run()
    if not render_only:
        results.write_text(json.dumps(data, indent=2) + "\n")
    text = markdown(data)
    replace_section(markdown_path, section, text)
    return text

