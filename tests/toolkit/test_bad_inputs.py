"""Bad input and Ctrl-C: exit code 2, one line on stderr naming the problem, nothing left.

Every case checks the same contract (README "Bad input ..."): the exit code is 2, stderr
holds exactly one line and it names the problem, and neither the output directory nor a
`.NAME.staging-*` / `.NAME.old-*` leftover exists next to it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import toolkit.artifacts
import toolkit.pipeline

SMALL = ["--calib-samples", "4", "--seq-len", "32", "--eval-windows", "2",
         "--eval-seq-len", "64", "--quiet"]
REPO = Path(__file__).resolve().parents[2]


def leftovers(out: Path) -> list[str]:
    """The output directory itself and any hidden staging / retired sibling of it."""
    if not out.parent.exists():
        return []
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name == out.name or p.name.startswith(f".{out.name}."))


def assert_refused(result, needle: str, out: Path | None = None) -> str:
    """Exit 2, exactly one stderr line that contains `needle`, nothing written to `out`."""
    assert result.code == 2, (result.code, result.err)
    assert len(result.err_lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    line = result.err_lines[0]
    assert needle.lower() in line.lower(), line
    assert "Traceback" not in result.err
    if out is not None:
        assert leftovers(out) == []
    return line


def copy_fake_model(fake_model_dir: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(fake_model_dir, model)
    return model


def compress_args(model: object, out: Path, *extra: object) -> list[object]:
    return ["compress", "--model", model, "--out", out, *SMALL, *extra]


# --- the model -------------------------------------------------------------------------


def test_model_path_that_does_not_exist(toolkit_cli, tmp_path):
    out = tmp_path / "out"
    result = toolkit_cli(*compress_args(tmp_path / "no-such-model", out))
    assert_refused(result, "neither a registered name nor an existing path", out)


def test_pickle_only_directory_is_refused_without_unpickling(toolkit_cli, fake_model_dir,
                                                            tmp_path, monkeypatch):
    import pickle

    def never(*args, **kwargs):
        raise AssertionError("a user's pickle file must never be loaded")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, never)
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(fake_model_dir / "config.json", model)
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    out = tmp_path / "out"
    line = assert_refused(toolkit_cli(*compress_args(model, out)), "pytorch_model.bin", out)
    assert "safetensors" in line


def test_truncated_safetensors(toolkit_cli, fake_model_dir, tmp_path):
    model = copy_fake_model(fake_model_dir, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    line = assert_refused(toolkit_cli(*compress_args(model, out)), "truncated", out)
    assert "model.safetensors" in line


@pytest.mark.parametrize("garbage, needle", [
    (os.urandom(64), "bad header length"),  # the 8-byte length itself is garbage
    ((40).to_bytes(8, "little") + b"{not json at all" + b"\x00" * 100, "not JSON"),
], ids=["header-length", "header-json"])
def test_corrupt_safetensors_header(toolkit_cli, fake_model_dir, tmp_path, garbage, needle):
    model = copy_fake_model(fake_model_dir, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(garbage + data[len(garbage):])
    out = tmp_path / "out"
    assert_refused(toolkit_cli(*compress_args(model, out)), needle, out)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")],
                         ids=["nan", "inf", "-inf"])
def test_weights_holding_nan_or_inf(toolkit_cli, fake_model_dir, tmp_path, bad_value):
    model = copy_fake_model(fake_model_dir, tmp_path)
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = bad_value
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    line = assert_refused(toolkit_cli(*compress_args(model, out)), "NaN/Inf", out)
    assert "model.layers.1.mlp.up_proj.weight" in line


def test_eval_on_a_path_that_does_not_exist(toolkit_cli, tmp_path):
    result = toolkit_cli("eval", tmp_path / "no-such-model", "--quiet")
    assert_refused(result, "neither a registered name nor an existing path")


def test_eval_on_an_artifact_with_a_corrupt_manifest(toolkit_cli, fake_model_dir, tmp_path):
    model = copy_fake_model(fake_model_dir, tmp_path)
    (model / "toolkit.json").write_text("{ this is not json", encoding="utf-8")
    assert_refused(toolkit_cli("eval", model, "--quiet"), "toolkit.json is not valid JSON")


# --- the method's knobs (all refused before the model is loaded) ------------------------


@pytest.mark.parametrize("extra, needle", [
    (["--sparsity", "0"], "outside (0, 1)"),
    (["--sparsity", "1"], "outside (0, 1)"),
    (["--sparsity", "1.5"], "outside (0, 1)"),
    (["--sparsity", "-0.1"], "outside (0, 1)"),
    (["--pattern", "4:2"], "0 < N < M"),
    (["--pattern", "0:4"], "0 < N < M"),
    (["--pattern", "abc"], "is not N:M"),
    (["--pattern", "2:4", "--sparsity", "0.6"], "means sparsity 0.5"),
    (["--option", "no_such_knob=3"], "unknown key 'no_such_knob'"),
    (["--option", "block_size"], "is not KEY=VALUE"),
    (["--layerwise", "owl", "--pattern", "2:4"], "drop --pattern or --layerwise owl"),
    (["--ignore", "("], "not a valid regex"),
    (["--calib-samples", "0"], "must be > 0"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_method_settings(toolkit_cli, fake_model_dir, tmp_path, extra, needle):
    out = tmp_path / "out"
    assert_refused(toolkit_cli(*compress_args(fake_model_dir, out, *extra)), needle, out)


def test_calibration_file_shorter_than_one_sequence(toolkit_cli, fake_model_dir, tmp_path):
    calib = tmp_path / "short.txt"
    calib.write_text("too short", encoding="utf-8")  # 9 byte tokens < --seq-len 32 + 1
    out = tmp_path / "out"
    result = toolkit_cli(*compress_args(fake_model_dir, out, "--calib-data", calib))
    assert_refused(result, "fewer than --seq-len 32", out)


def test_calibration_file_that_does_not_exist(toolkit_cli, fake_model_dir, tmp_path):
    out = tmp_path / "out"
    result = toolkit_cli(*compress_args(fake_model_dir, out, "--calib-data",
                                        tmp_path / "missing.txt"))
    assert_refused(result, "missing.txt does not exist", out)


# --- the output directory ---------------------------------------------------------------


def test_existing_output_needs_overwrite(toolkit_cli, fake_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep-me.txt").write_text("old artifact", encoding="utf-8")
    result = toolkit_cli(*compress_args(fake_model_dir, out, "--method", "magnitude"))
    assert result.code == 2
    assert len(result.err_lines) == 1 and "--overwrite" in result.err_lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep-me.txt"]  # untouched

    result = toolkit_cli(*compress_args(fake_model_dir, out, "--method", "magnitude",
                                        "--overwrite"))
    assert result.code == 0, result.err
    names = {p.name for p in out.iterdir()}
    assert "keep-me.txt" not in names and {"toolkit.json", "model.safetensors"} <= names
    assert leftovers(out) == ["out"]  # no staging or retired copy next to it


# --- Ctrl-C -----------------------------------------------------------------------------


def test_ctrl_c_during_compression(toolkit_cli, fake_model_dir, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toolkit.pipeline.compress, "apply", interrupt)
    out = tmp_path / "out"
    result = toolkit_cli(*compress_args(fake_model_dir, out))
    assert_refused(result, "interrupted", out)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_ctrl_c_while_saving(toolkit_cli, fake_model_dir, tmp_path, monkeypatch, existing):
    """Interrupted after the weights were written into the staging directory: the
    staging directory is removed and an existing --out is left as it was."""
    real_save_artifact = toolkit.artifacts.save_artifact
    written: list[list[str]] = []

    def interrupted_save(out, write_files, manifest, **kwargs):
        def write_then_interrupt(staging: Path) -> None:
            write_files(staging)
            written.append(sorted(p.name for p in staging.iterdir()))
            raise KeyboardInterrupt

        return real_save_artifact(out, write_then_interrupt, manifest, **kwargs)

    monkeypatch.setattr(toolkit.artifacts, "save_artifact", interrupted_save)
    out = tmp_path / "out"
    extra: list[str] = []
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old artifact", encoding="utf-8")
        extra = ["--overwrite"]
    result = toolkit_cli(*compress_args(fake_model_dir, out, "--method", "magnitude", *extra))
    assert written and "model.safetensors" in written[0]  # it was interrupted mid-save
    assert_refused(result, "interrupted", out if not existing else None)
    if existing:
        assert leftovers(out) == ["out"]
        assert sorted(p.name for p in out.iterdir()) == ["old.txt"]


def test_sigint_to_a_running_compress(fake_model_dir, tmp_path):
    """A real Ctrl-C (SIGINT) to `python -m toolkit compress` while it evaluates."""
    out = tmp_path / "out"
    err_path = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "toolkit", "compress", "--model", str(fake_model_dir),
               "--method", "sparsegpt", "--calib-samples", "64", "--seq-len", "128",
               "--eval-windows", "all", "--eval-seq-len", "64", "--out", str(out)]
    with err_path.open("w", encoding="utf-8") as err:
        # A shell's background job ignores SIGINT, and an ignored signal stays ignored
        # across exec: give the child the default disposition so Python installs its
        # KeyboardInterrupt handler.
        process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            # Not --quiet: the progress bars on stderr tell when the real work has begun.
            deadline = time.monotonic() + 240
            while "eval wikipedia" not in err_path.read_text(encoding="utf-8", errors="replace"):
                assert process.poll() is None, err_path.read_text(encoding="utf-8")
                assert time.monotonic() < deadline, "compress never started evaluating"
                time.sleep(0.2)
            time.sleep(0.5)
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = err_path.read_text(encoding="utf-8")
    assert code == 2, stderr
    assert "Traceback" not in stderr
    # Progress bars may precede it, but the message is one whole line of its own and the
    # last thing printed (no bar glued to its front or redrawn after it).
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in lines if "interrupted" in line] == [lines[-1]], stderr
    assert lines[-1].startswith("toolkit compress: interrupted"), stderr
    assert leftovers(out) == []


def test_subprocess_user_error_is_one_line(tmp_path):
    """The same contract through a real `python -m toolkit` process."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "toolkit", "compress", "--model",
                           str(tmp_path / "nope"), "--out", str(out), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("toolkit compress: error:")
    assert leftovers(out) == []
