"""What every bundle (export.bundle for LLMs, export.vision_bundle for image models) does
the same way: where it may be written, how the folder is staged and moved into place, and
the SHA-256 of every file its manifest lists.

`staged_bundle` is the one writer: the verified model file is exported into a hidden
staging sibling (models.staging) under the name MODEL_STEM + suffix, the caller's
`finish` adds its files and returns the manifest, bundle.json is written last and the
folder is renamed into place only then. A reader therefore never meets a bundle without
its manifest, nor one whose model failed verification; with `overwrite` an existing
bundle is replaced only once the new one is complete, and a folder that is not a bundle
is never replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.job import export_model
from export.options import ExportOptions
from export.registry import get_exporter
from export.report import ExportReport
from models.staging import make_staging_dir, sweep_stale_staging

BUNDLE_FORMAT = "edge-toolkit-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"
MODEL_STEM = "model"
# What export.bundle_read reads back: onnx and tflite bundles it runs; coreml bundles it
# checks file by file (Core ML runs only on macOS, export.coreml_bundle).
BUNDLE_TARGETS = ("onnx", "tflite", "coreml")
HASH_CHUNK = 1 << 22

# finish(staging, model file, report) -> the complete manifest, its "files" included.
Finish = Callable[[Path, Path, ExportReport], dict]


def check_bundle_dir(target: str, bundle: Path, options: ExportOptions) -> Path:
    """`bundle` made absolute, refused before any work when it cannot become the bundle."""
    if target not in BUNDLE_TARGETS:
        raise ExportError(f"--bundle is written for {', '.join(BUNDLE_TARGETS)} (the "
                          f"formats a bundle is read back in), not {target}: use --out "
                          "for a single file")
    given = Path(bundle).expanduser()
    if given.exists() or given.is_symlink():
        if not given.is_dir() or given.is_symlink():
            raise ExportError(f"--bundle {given} exists and is not a folder: choose a new path")
        if not options.overwrite:
            raise ExportError(f"--bundle {given} exists: pass --overwrite or choose another "
                              "path")
        if any(given.iterdir()) and not (given / MANIFEST).is_file():
            raise ExportError(f"--bundle {given} is a folder that holds no {MANIFEST}, so it "
                              "is not a bundle --overwrite may replace: choose a new path")
    return Path(os.path.abspath(given))


def staged_bundle(target: str, artifact: Any, bundle: Path, options: ExportOptions,
                  finish: Finish) -> ExportReport:
    """Export `artifact` into a staging folder, let `finish` complete it, write the
    manifest it returns, rename the folder to `bundle`. A report whose verification failed
    comes back with path None and nothing written, as from export_model."""
    bundle = check_bundle_dir(target, bundle, options)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(bundle.parent)
    staging = make_staging_dir(bundle)
    try:
        model = staging / f"{MODEL_STEM}{get_exporter(target).suffix}"
        report = export_model(target, artifact, model,
                              dataclasses.replace(options, overwrite=False))
        if not report.passed:
            return report
        manifest = finish(staging, model, report)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n",
                                        encoding="utf-8")
        move_into_place(staging, bundle)
        report.path = os.fspath(bundle)
        report.details["bundle_files"] = sorted(manifest["files"]) + [MANIFEST]
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_files(staging: Path, model: Path) -> list[str]:
    """The model file and its companions (ONNX external data: model.onnx.data); a package
    folder (Core ML's model.mlpackage) as every file inside it, by relative path."""
    entries = sorted(p for p in staging.iterdir()
                     if p.name == model.name or p.name.startswith(model.name + "."))
    return [name for entry in entries for name in folder_files(staging, entry)]


def folder_files(root: Path, entry: Path) -> list[str]:
    """`entry` (a file, or a folder's files in sorted order) relative to `root`, POSIX."""
    files = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
    return [p.relative_to(root).as_posix() for p in files]


def files_section(folder: Path) -> dict[str, dict]:
    """{relative name: {"bytes", "sha256"}} for every file under `folder` but the manifest."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks (a 7B model's weights are several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def move_into_place(staging: Path, bundle: Path) -> None:
    """Rename the complete `staging` to `bundle`; an existing bundle is set aside first and
    removed only after the new one is in place (put back if the rename fails)."""
    if not bundle.exists():
        os.replace(staging, bundle)
        return
    retired = make_staging_dir(bundle, "old")
    try:
        os.replace(bundle, retired / "old")
        try:
            os.replace(staging, bundle)
        except BaseException:
            os.replace(retired / "old", bundle)
            raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
