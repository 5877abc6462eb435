"""Bytes an export wrote: the file, its external data (ONNX over 2 GB) or a package folder
(Core ML .mlpackage). Exports write into a folder of their own (export.staging), so
everything in the written path's folder belongs to it."""

from __future__ import annotations

from pathlib import Path


def written_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.parent.rglob("*") if p.is_file())
