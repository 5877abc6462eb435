"""Artifact directories: staged in a hidden sibling, renamed into place, never half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from toolkit.artifacts import MANIFEST, check_output_dir, load_manifest, save_artifact
from toolkit.commands.common import write_json
from toolkit.errors import UserError

MANIFEST_DATA = {"format": "edge-toolkit-artifact/1", "recipe": [{"method": "wanda"}]}


def siblings(out: Path) -> list[str]:
    """`out` itself and every hidden `.NAME.*` staging or retired directory next to it."""
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name == out.name or p.name.startswith(f".{out.name}."))


def old_artifact(out: Path) -> Path:
    out.mkdir()
    (out / "weights.bin").write_text("old weights", encoding="utf-8")
    (out / MANIFEST).write_text('{"old": true}\n', encoding="utf-8")
    return out


def assert_old_artifact_intact(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(["weights.bin", MANIFEST])
    assert (out / "weights.bin").read_text(encoding="utf-8") == "old weights"
    assert json.loads((out / MANIFEST).read_text(encoding="utf-8")) == {"old": True}


def test_files_are_written_in_a_staging_sibling_then_renamed(tmp_path):
    out = tmp_path / "artifact"
    seen = {}

    def write(staging: Path) -> None:
        seen["staging"] = staging
        seen["out_existed"] = out.exists()
        (staging / "model.safetensors").write_bytes(b"weights")
        (staging / "sub").mkdir()
        (staging / "sub" / "file.txt").write_text("nested", encoding="utf-8")

    assert save_artifact(out, write, MANIFEST_DATA) == out
    staging = seen["staging"]
    assert staging.parent == out.parent and staging.name.startswith(".artifact.staging-")
    assert seen["out_existed"] is False  # nothing visible at `out` while writing
    assert not staging.exists()
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert (out / "sub" / "file.txt").read_text(encoding="utf-8") == "nested"
    assert json.loads((out / MANIFEST).read_text(encoding="utf-8")) == MANIFEST_DATA
    assert siblings(out) == ["artifact"]


def test_missing_parent_directories_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "artifact"
    save_artifact(out, lambda staging: None, MANIFEST_DATA)
    assert (out / MANIFEST).is_file()


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_failure_while_writing_leaves_nothing(tmp_path, error):
    out = tmp_path / "artifact"

    def write(staging: Path) -> None:
        (staging / "model.safetensors").write_bytes(b"half of the wei")
        raise error

    with pytest.raises(type(error)):
        save_artifact(out, write, MANIFEST_DATA)
    assert siblings(out) == []


def test_manifest_that_cannot_be_serialized_leaves_nothing(tmp_path):
    out = tmp_path / "artifact"
    with pytest.raises(TypeError):
        save_artifact(out, lambda staging: None, {"not json": object()})
    assert siblings(out) == []


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = old_artifact(tmp_path / "artifact")
    called = []
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        save_artifact(out, called.append, MANIFEST_DATA)
    assert called == []  # refused before any work
    assert_old_artifact_intact(out)
    assert siblings(out) == ["artifact"]


def test_overwrite_replaces_the_old_directory(tmp_path):
    out = old_artifact(tmp_path / "artifact")
    seen = {}

    def write(staging: Path) -> None:
        seen["old_still_there"] = (out / "weights.bin").is_file()
        (staging / "model.safetensors").write_bytes(b"new")

    save_artifact(out, write, MANIFEST_DATA, overwrite=True)
    assert seen["old_still_there"]  # the old artifact stays readable while writing
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.safetensors", MANIFEST])
    assert siblings(out) == ["artifact"]  # no staging or retired copy left


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_failed_overwrite_keeps_the_old_directory(tmp_path, error):
    out = old_artifact(tmp_path / "artifact")

    def write(staging: Path) -> None:
        (staging / "model.safetensors").write_bytes(b"partial")
        raise error

    with pytest.raises(type(error)):
        save_artifact(out, write, MANIFEST_DATA, overwrite=True)
    assert_old_artifact_intact(out)
    assert siblings(out) == ["artifact"]


def test_failed_rename_during_overwrite_restores_the_old_directory(tmp_path, monkeypatch):
    """The last step (staging -> out) fails after the old directory was moved aside."""
    out = old_artifact(tmp_path / "artifact")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".artifact.staging-"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        save_artifact(out, lambda staging: None, MANIFEST_DATA, overwrite=True)
    monkeypatch.undo()
    assert_old_artifact_intact(out)
    assert siblings(out) == ["artifact"]


def test_output_path_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "artifact"
    out.write_text("a file", encoding="utf-8")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="existing file"):
            check_output_dir(out, overwrite)
    assert out.read_text(encoding="utf-8") == "a file"


def test_unwritable_parent_is_refused(tmp_path, monkeypatch):
    # Simulated: as root a chmod'ed directory would still be writable.
    parent = tmp_path / "read-only"
    parent.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != parent)
    with pytest.raises(UserError, match="cannot write into"):
        check_output_dir(parent / "artifact", overwrite=False)


def test_load_manifest(tmp_path):
    assert load_manifest(tmp_path) is None  # not an artifact
    (tmp_path / MANIFEST).write_text(json.dumps(MANIFEST_DATA), encoding="utf-8")
    # A format /1 manifest comes back in the current schema (models.manifest), upgraded in
    # memory: an LLM artifact of /1 named no family; the file itself is not rewritten.
    assert load_manifest(tmp_path) == {**MANIFEST_DATA, "format": "edge-toolkit-artifact/2",
                                       "family": "llm", "stages": [], "metrics": {},
                                       "versions": {}}
    assert json.loads((tmp_path / MANIFEST).read_text(encoding="utf-8")) == MANIFEST_DATA
    (tmp_path / MANIFEST).write_text('{"format": "edge-toolkit-artifact/7"}', encoding="utf-8")
    with pytest.raises(UserError, match="unknown artifact format"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("content", [b"{ not json", b"\xff\xfe\x00garbage", b""],
                         ids=["bad-json", "not-utf8", "empty"])
def test_load_manifest_on_a_corrupt_file_is_a_user_error(tmp_path, content):
    (tmp_path / MANIFEST).write_bytes(content)
    with pytest.raises(UserError, match="toolkit.json is not valid JSON"):
        load_manifest(tmp_path)


def test_write_json_is_atomic_and_refuses_a_directory(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "results.json"
    write_json(target, {"a": 1})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 1}
    write_json(None, {"ignored": True})  # no --json: nothing to do

    def broken_dump(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(KeyboardInterrupt):
        write_json(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 1}  # old file intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]  # no temp file
    with pytest.raises(UserError, match="is a directory"):
        write_json(tmp_path, {"a": 1})
