"""Regenerate one marked section of a Markdown file, leaving the rest untouched."""

from __future__ import annotations

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
