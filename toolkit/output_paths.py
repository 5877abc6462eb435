"""Every output path of a command, checked once before any work starts.

A bad `--json` found after a ten-minute compression would leave the artifact written and
the report lost, so `toolkit.cli.main` calls `check_output_paths(args)` on the parsed
arguments of every command: each flag in OUTPUT_FLAGS that is set must have a UTF-8 name
whose components fit the file system, a folder above it that is a folder and writable,
not be a directory where a file is expected, not exist without `--overwrite` (where the
command has that flag), and not be the same path as another output.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from toolkit.errors import UserError

# attribute on the parsed args -> True when the path may be a directory (an artifact dir,
# a .mlpackage); the others are files (reports).
OUTPUT_FLAGS = {"out": True, "json": False, "html": False}
DEFAULT_NAME_MAX = 255


def shown(path: Path | str) -> str:
    """`path` printable on any terminal: bytes that are not UTF-8 as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def nearest_existing(path: Path) -> Path:
    """`path` itself or its closest ancestor that exists (the cwd for a bare name)."""
    candidate = path.absolute()
    while not _exists(candidate) and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, say: not there, and the length check names it
        return False


def name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


def check_output_path(flag: str, path: Path, *, directory_ok: bool,
                      overwrite: bool | None) -> None:
    """UserError naming `flag` and the fix when `path` cannot be written as an output."""
    text = shown(path)
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{flag} {text}: the name is not valid UTF-8: choose a name in "
                        "UTF-8 characters") from None
    existing = nearest_existing(path)
    limit = name_max(existing if existing.is_dir() else existing.parent)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise UserError(f"{flag} {text[:80]}...: a name of {len(os.fsencode(part))} bytes "
                            f"is longer than the file system allows ({limit}): choose a "
                            "shorter name")
    _check_existing(flag, path, text, existing, directory_ok, overwrite)


def _check_existing(flag: str, path: Path, text: str, existing: Path, directory_ok: bool,
                    overwrite: bool | None) -> None:
    if existing == path.absolute():
        if path.is_dir() and not directory_ok:
            raise UserError(f"{flag} {text} is a directory: pass a file path")
        if overwrite is False and flag == "--out":
            raise UserError(f"{flag} {text} already exists: choose a new path or pass "
                            "--overwrite")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {text}: {shown(existing)} is a file, not a folder: choose "
                        "a path under a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {text}: cannot create files in {shown(existing)} (read-only "
                        "or no permission): choose a writable location")


def output_paths(args: argparse.Namespace) -> list[tuple[str, Path, bool]]:
    """(flag, path, directory_ok) for every output flag set on `args`."""
    found = []
    for attr, directory_ok in OUTPUT_FLAGS.items():
        value = getattr(args, attr, None)
        if isinstance(value, str | Path) and str(value):
            found.append((f"--{attr}", Path(value).expanduser(), directory_ok))
    return found


def check_output_paths(args: argparse.Namespace) -> None:
    """Check every output path of the parsed command line; see the module docstring."""
    overwrite = getattr(args, "overwrite", None)
    seen: dict[Path, str] = {}
    for flag, path, directory_ok in output_paths(args):
        check_output_path(flag, path, directory_ok=directory_ok,
                          overwrite=overwrite if isinstance(overwrite, bool) else None)
        key = path.absolute()
        if key in seen:
            raise UserError(f"{flag} {shown(path)} is also {seen[key]}: give each output its "
                            "own path")
        seen[key] = flag
