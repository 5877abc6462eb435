"""Artifact directories: staged in a temporary sibling, renamed into place.

A reader never sees a half-written artifact: everything is written into
`.NAME.staging-PID-XXXX` next to the target and renamed only once complete; any failure,
Ctrl-C included, removes the staging directory, and a later save sweeps the ones a killed
run left (models.staging). `toolkit.json` is the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.errors import ModelError
from models.family import family_of_module
from models.json_file import read_json_object
from models.manifest import (
    MANIFEST_FILE,
    REWRITE_FIX,
    check_manifest,
    new_manifest_fields,
    upgrade_manifest,
)
from models.registry import LoadedModel
from models.staging import make_staging_dir, sweep_stale_staging
from toolkit.errors import UserError

MANIFEST = MANIFEST_FILE
RECIPE_FILE = "recipe.yaml"


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
        move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def save_model_artifact(out: Path, loaded: LoadedModel, manifest: dict[str, Any], *,
                        recipe_yaml: str | None = None, overwrite: bool = False) -> Path:
    """Write `loaded` as an artifact at `out`, the one way every command saves a model.

    The family that owns the module (models.family) writes its files into the staging
    directory; `recipe.yaml` is added when given; `manifest` is completed IN PLACE (so a
    caller's --json report has it) with the schema's keys (models.manifest: format,
    family, recipe, stages, metrics, versions), the family's section (the caller's values
    for a section key are laid over the computed ones, e.g. an "input" naming the data
    set) and "files"; then it is checked and written as toolkit.json, and the staging
    directory is renamed into place."""
    family = family_of_module(loaded.module)
    loaded.family = family.name
    section = family.section(loaded)
    for key, value in section.items():
        given = manifest.get(key)
        if isinstance(value, dict) and isinstance(given, dict):
            section[key] = {**value, **given}
    fields = new_manifest_fields(family.name, manifest)
    rest = {k: v for k, v in manifest.items() if k not in fields and k not in section}
    manifest.clear()
    manifest.update({**fields, **section, **rest})

    def write(staging: Path) -> None:
        family.write(staging, loaded, manifest)
        if recipe_yaml is not None:
            (staging / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
        manifest["files"] = files_section(staging, data_files=family.data_files)
        check_manifest(manifest, str(out / MANIFEST))

    return save_artifact(out, write, manifest, overwrite=overwrite)


def files_section(directory: Path, *, data_files: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every file's name, the weight files (safetensors that are not data) and the true
    byte counts, as `toolkit.json` records them (itself excluded)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    weights = [p for p in files if p.suffix == ".safetensors" and p.name not in data_files]
    return {"weights_bytes": sum(p.stat().st_size for p in weights),
            "total_bytes": sum(p.stat().st_size for p in files),
            "weights": [p.name for p in weights],
            "names": [p.relative_to(directory).as_posix() for p in files]}


def move_into_place(staging: Path, out: Path) -> None:
    """Rename a complete `staging` directory to `out`, replacing an old `out` only once
    the new one is in place."""
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
    """The artifact's manifest in the current schema (an old-format one is upgraded in
    memory, models.manifest), or None when `directory` is not a toolkit artifact."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    raw = read_json_object(path, REWRITE_FIX, UserError)
    try:
        return upgrade_manifest(raw, str(path))
    except ModelError as exc:
        raise UserError(str(exc)) from None
