"""Artifact directories: staged in a temporary sibling, renamed into place.

A reader never sees a half-written artifact: everything is written into
`.NAME.staging-PID-XXXX` next to the target and renamed only once complete; any failure,
Ctrl-C included, removes the staging directory, and a later save sweeps the ones a killed
run left (toolkit.staging). `toolkit.json` is the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.errors import UserError
from toolkit.staging import make_staging_dir, sweep_stale_staging

MANIFEST = "toolkit.json"


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail early (before any work) if `out` cannot be written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file: choose a directory path")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out} already exists: choose a new path or pass --overwrite")
    parent = out.resolve().parent
    if parent.exists() and not os.access(parent, os.W_OK):
        raise UserError(f"cannot write into {parent}: choose a writable --out")


def save_artifact(out: Path, write_files: Callable[[Path], None], manifest: dict[str, Any],
                  *, overwrite: bool = False) -> Path:
    """Call `write_files(staging)`, add the manifest, then move staging to `out`."""
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(out.parent)
    staging = make_staging_dir(out)
    try:
        write_files(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    # --overwrite: keep the old directory until the new one is in place.
    retired = make_staging_dir(out, "old")
    os.replace(out, retired / "old")
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(retired / "old", out)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def load_manifest(directory: Path) -> dict[str, Any] | None:
    """The artifact's manifest, or None when `directory` is not a toolkit artifact."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not valid JSON: re-run the command that wrote it") from None
