"""`export_model(target, artifact, out, options)`: the one way to export.

The registered exporter writes into a hidden folder beside `out`, under the final name
(an ONNX file names its external data file after itself); the file is verified there and
moved into place only when it passed (and, with require_carried, carried every
compression stage). On any failure the folder is removed and an existing `out` is left
as it was, so no reader ever sees a half-written or unverified file. The folder's name
carries the pid (models.staging), so the next export sweeps what a killed one left.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.options import ExportOptions
from export.registry import get_exporter
from export.report import ExportReport
from models.staging import make_staging_dir, sweep_stale_staging


def check_output(target: str, out: Path, options: ExportOptions) -> Path:
    """`out` made absolute (it may cross into a runtime's child process, which runs in
    another directory), refused before any work when it cannot be the target's output."""
    exporter = get_exporter(target)
    given = Path(out).expanduser()
    if given.suffix != exporter.suffix:
        raise ExportError(f"--out {given} must end in {exporter.suffix} for target {target}")
    if given.exists() and not options.overwrite:
        raise ExportError(f"--out {given} exists: pass --overwrite or choose another path")
    for companion in exporter.companions(given):
        if companion.exists() and not options.overwrite:
            raise ExportError(f"{companion} exists and an export to --out {given} would "
                              "replace it: pass --overwrite or choose another path")
    return Path(os.path.abspath(given))


def export_model(target: str, artifact: Any, out: Path,
                 options: ExportOptions | None = None) -> ExportReport:
    """Export `artifact` (a models.LoadedModel) to `out` with the exporter registered for
    `target`. A report whose verification failed comes back with path None and nothing
    written; an ExportError is raised for what the caller can fix."""
    options = options or ExportOptions()
    exporter = get_exporter(target)
    out = check_output(target, out, options)
    if not exporter.accepts(artifact):
        raise ExportError(f"{target} does not export {artifact.source}: it takes "
                          f"{' and '.join(exporter.kinds)} models")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(out.parent)  # what an earlier, killed export left behind
    folder = make_staging_dir(out)
    try:
        report = exporter.export(artifact, folder / out.name, options)
        if options.require_carried and report.lost:
            raise report.lost_error()
        if report.passed:
            _move_into_place(folder, out, exporter.companions(out))
            report.path = os.fspath(out)
        return report
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _move_into_place(folder: Path, out: Path, companions: list[Path]) -> None:
    """Each written entry (the file, ONNX's external data, a Core ML package folder)
    renamed over its destination; a folder being replaced is first renamed aside into
    the staging folder (removed with it), since a rename cannot replace a folder. A
    companion of an earlier export that this one did not write (the external data of a
    big ONNX file replaced by a small one) goes aside too: nothing would refer to it."""
    written_names = {p.name for p in folder.iterdir()}
    for stale in companions:
        if stale.name not in written_names and stale.exists():
            os.replace(stale, folder / f".replaced-{stale.name}")
    for written in sorted(p for p in folder.iterdir() if p.name in written_names):
        destination = out.parent / written.name
        if destination.is_dir():
            os.replace(destination, folder / f".replaced-{written.name}")
        os.replace(written, destination)
