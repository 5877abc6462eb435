"""The command line tried as a careless user and as an attacker would (issue 14).

Every case holds one contract: exit code 2, exactly one line on stderr that names the input
and the fix, no traceback, nothing half-written and an existing file intact. The cases are
tables looped over commands x failure classes: bad output paths (checked before any work),
operating-system failures in the middle of a command, and out-of-range values. Damaged and
abandoned files are in test_robustness_files.py, corrupt inputs in test_robustness_inputs.py.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import UserError

REPO = Path(__file__).resolve().parents[2]
FAST_LLM = ["--calib-samples", "2", "--seq-len", "16", "--no-eval", "--quiet"]


def one_line(result, *needles: str) -> str:
    """Assert the shared contract on a CLI result; the line."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    assert len(result.err_lines) == 1, f"expected one stderr line, got:\n{result.err}"
    line = result.err_lines[0]
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


# --- every output path, every command, checked before any work ------------------------

def command_lines(tmp: Path) -> dict[str, list[object]]:
    """The shortest command line of each command; {OUT}, {JSON}, {HTML} are replaced."""
    return {
        "compress": ["compress", "--model", "fake-llama", "--out", "{OUT}", "--json", "{JSON}"],
        "run": ["run", REPO / "recipes" / "wanda50-gptq4.yaml", "--out", "{OUT}",
                "--json", "{JSON}"],
        "eval": ["eval", "fake-llama", "--json", "{JSON}"],
        "export": ["export", "onnx", "--model", "fake-llama", "--out", "{OUT}.onnx",
                   "--json", "{JSON}"],
        "bench": ["bench", "fake-llama", "--json", "{JSON}", "--html", "{HTML}"],
        "models": ["models", "--json", "{JSON}"],
        "train-vmoe": ["train", "vmoe", "--out", "{OUT}", "--json", "{JSON}"],
        "train-portrait": ["train", "portrait", "--out", "{OUT}", "--json", "{JSON}"],
    }


def _with(argv: list[object], **paths: object) -> list[str]:
    out = []
    for arg in argv:
        text = os.fspath(arg) if isinstance(arg, Path) else str(arg)
        for key, value in paths.items():
            text = text.replace("{" + key + "}", os.fspath(value))
        out.append(text)
    return out


def bad_outputs(tmp: Path) -> dict[str, tuple[dict[str, Path], str]]:
    """failure class -> ({flag: bad path}, words the line must hold)."""
    a_file = tmp / "a-file"
    a_file.write_text("x")
    folder = tmp / "folder.json"
    folder.mkdir()
    long_name = "n" * 300
    not_utf8 = os.fsdecode(os.fsencode(tmp) + b"/r\xff\xfe.json")  # as argv decodes it
    return {
        "name too long": ({"JSON": tmp / f"{long_name}.json"}, "longer than the file system"),
        "parent is a file": ({"JSON": a_file / "r.json"}, "is a file, not a folder"),
        "json is a directory": ({"JSON": folder}, "is a directory"),
        "not utf-8": ({"JSON": Path(not_utf8)}, "not valid UTF-8"),
        "json is out": ({"JSON": tmp / "same", "OUT": tmp / "same"}, "give each output"),
    }


OUTPUT_FAILURES = ("name too long", "parent is a file", "json is a directory", "not utf-8",
                   "json is out")
SINGLE_OUTPUT = ("export", "eval", "models")  # no two of their outputs can share a path
OUTPUT_CASES = [(command, failure) for command in command_lines(Path("/x"))
                for failure in OUTPUT_FAILURES
                if not (failure == "json is out" and command in SINGLE_OUTPUT)]


@pytest.mark.parametrize(("command", "failure"), OUTPUT_CASES)
def test_bad_output_paths_are_refused_before_any_work(toolkit_cli, tmp_path, command,
                                                      failure, monkeypatch):
    from toolkit.cli import COMMANDS
    from toolkit.commands import train_cmd, train_portrait_job

    def no_work(args):
        raise AssertionError("the output paths must be checked before any work")

    runs = [(module, "run") for module in COMMANDS if hasattr(module, "run")]
    for module, name in [*runs, (train_cmd, "run_vmoe"), (train_portrait_job, "run_portrait")]:
        monkeypatch.setattr(module, name, no_work)
    argv = command_lines(tmp_path)[command]
    overrides, words = bad_outputs(tmp_path)[failure]
    if failure == "json is out" and command == "bench":
        overrides = {"JSON": tmp_path / "same", "HTML": tmp_path / "same"}
    paths = {"OUT": tmp_path / "out", "JSON": tmp_path / "r.json",
             "HTML": tmp_path / "r.html", **overrides}
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line(toolkit_cli(*_with(argv, **paths)), words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created


def test_read_only_output_folder_is_refused_before_work(toolkit_cli, tmp_path, monkeypatch):
    """Root ignores chmod, so the check's os.access is made to answer as for another user."""
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()

    def access(path, mode, **kwargs):
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    for argv in (["models", "--json", locked / "r.json"],
                 ["compress", "--model", "fake-llama", "--out", locked / "out"]):
        one_line(toolkit_cli(*argv), str(locked), "cannot create files", "writable")
    assert list(locked.iterdir()) == []


def test_non_utf8_output_name_from_a_real_command_line(tmp_path):
    """The bytes reach Python as they would from a shell; the line escapes them."""
    path = os.fsencode(tmp_path) + b"/report-\xff.json"
    result = subprocess.run([sys.executable, "-m", "toolkit", "models", "--json", path],
                            cwd=REPO, capture_output=True, timeout=300)
    assert result.returncode == 2, result.stderr
    err = result.stderr.decode("utf-8")  # valid UTF-8 even though the name is not
    assert len(err.strip().splitlines()) == 1 and "not valid UTF-8" in err
    assert "\\xff" in err and list(tmp_path.iterdir()) == []


# --- operating-system failures in the middle of a command ------------------------------

OS_FAILURES = {
    "disk full": (errno.ENOSPC, "No space left on device", "free space"),
    "read-only file system": (errno.EROFS, "Read-only file system", "write somewhere else"),
    "permission denied": (errno.EACCES, "Permission denied", "permissions"),
    "name too long": (errno.ENAMETOOLONG, "File name too long", "shorter name"),
}


def _fail_json_write(monkeypatch, code):
    import toolkit.data.cache as cache

    def refuse(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), os.fspath(path))

    monkeypatch.setattr(cache, "open", refuse, raising=False)


def _fail_artifact_write(monkeypatch, code):
    import toolkit.artifacts as artifacts

    def refuse(out, kind="staging"):
        raise OSError(code, os.strerror(code), os.fspath(out.parent / f".{out.name}.{kind}"))

    monkeypatch.setattr(artifacts, "make_staging_dir", refuse)


WRITES = {  # command -> (argv builder, how its write fails, the path it wrote to)
    "models --json": (lambda tmp: ["models", "--json", tmp / "r.json"], _fail_json_write,
                      "r.json"),
    "compress --out": (lambda tmp: ["compress", "--model", "fake-llama", "--method",
                                    "magnitude", "--out", tmp / "out", *FAST_LLM],
                       _fail_artifact_write, ".out.staging"),
}


@pytest.mark.parametrize("failure", list(OS_FAILURES))
@pytest.mark.parametrize("write", list(WRITES))
def test_os_failures_are_one_line_with_path_and_reason(toolkit_cli, tmp_path, monkeypatch,
                                                       write, failure):
    code, reason, fix = OS_FAILURES[failure]
    argv, fail, written = WRITES[write]
    (tmp_path / "r.json").write_text('{"old": true}\n')  # an existing report stays intact
    fail(monkeypatch, code)
    line = one_line(toolkit_cli(*argv(tmp_path)), reason, fix, written)
    assert str(tmp_path) in line
    assert json.loads((tmp_path / "r.json").read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.slow  # a fresh interpreter tokenizes the built-in text once: ~50 s on 2 cores
def test_disk_full_in_a_real_write_limit_subprocess(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past 64 KB (EFBIG), as a full disk
    refuses them: the artifact's weights hit it inside safetensors (Rust). A small
    calibration file keeps the built-in text caches out of it."""
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "out"
    script = (
        "import resource, signal, sys\n"
        "from toolkit.quiet import quiet_libraries\n"
        "quiet_libraries()  # as toolkit.cli.main does, before any model import\n"
        "import models\n"
        "from toolkit.data import cached_streams\n"
        "cached_streams(models.create_model('fake-llama').tokenizer)  # caches filled first\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "from toolkit.cli import main\n"
        f"sys.exit(main(['compress', '--model', 'fake-llama', '--method', 'magnitude', "
        f"'--out', {str(out)!r}, '--calib-data', {str(calib)!r}, *{FAST_LLM!r}]))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "File too large" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and str(out) in lines[0]
    assert list(tmp_path.iterdir()) == [calib]  # no artifact, no staging folder


def test_safetensors_os_errors_are_read_from_their_message():
    from toolkit.os_errors import describe_os_error, os_error_from

    exc = RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                       'message: "No space left on device" })')
    converted = os_error_from(exc)
    assert converted.errno == errno.ENOSPC
    assert os_error_from(RuntimeError("I/O error: File too large (os error 27)")).errno == 27
    line = describe_os_error(converted, ["--out /data/art"])
    assert line.startswith("while writing --out /data/art: No space left on device")
    assert os_error_from(ValueError("unrelated")) is None


def test_read_only_cache_names_the_cache_variable(toolkit_cli, tmp_path, monkeypatch):
    from toolkit.os_errors import describe_os_error

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGE_TOOLKIT_CACHE", str(cache))
    line = describe_os_error(OSError(errno.EROFS, "Read-only file system",
                                     str(cache / "data" / "x.json")), [], str(cache))
    assert "EDGE_TOOLKIT_CACHE" in line and str(cache / "data") in line


# --- values out of range ----------------------------------------------------------------

SEED_COMMANDS = {
    "compress": ["compress", "--model", "fake-llama", "--out", "{OUT}"],
    "train-vmoe": ["train", "vmoe", "--out", "{OUT}"],
    "train-portrait": ["train", "portrait", "--out", "{OUT}"],
    "train-upcycle": ["train", "upcycle", "--model", "fake-llama", "--out", "{OUT}"],
}


@pytest.mark.parametrize("seed", [str(2**64), str(2**63), "-1"])
@pytest.mark.parametrize("command", list(SEED_COMMANDS))
def test_seeds_out_of_range_are_refused(toolkit_cli, tmp_path, command, seed):
    argv = _with(SEED_COMMANDS[command], OUT=tmp_path / "out")
    one_line(toolkit_cli(*argv, "--seed", seed), "--seed", seed, "2**63")
    assert not (tmp_path / "out").exists()


def test_largest_seed_is_accepted_by_torch_and_numpy():
    import numpy as np
    import torch

    from toolkit.limits import MAX_SEED, seed_arg

    assert seed_arg(str(MAX_SEED)) == MAX_SEED
    torch.Generator().manual_seed(MAX_SEED + 1)  # the held-out split adds one
    np.random.default_rng(MAX_SEED + 1)


def test_eval_window_longer_than_the_context_is_refused(toolkit_cli):
    import models

    context = models.create_model("fake-llama").module.config.max_position_embeddings
    line = one_line(toolkit_cli("eval", "fake-llama", "--eval-seq-len", str(context + 1),
                                "--quiet"), "--eval-seq-len", f"context of {context}")
    assert f"{context} or less" in line


@pytest.mark.parametrize(("calib", "eval_len", "flag"), [
    (2048, 64, "--seq-len"), (64, 4096, "--eval-seq-len"), (1024, 1024, None)])
def test_check_lengths_against_the_model_context(calib, eval_len, flag):
    from types import SimpleNamespace

    import models
    from toolkit.eval import EvalProtocol
    from toolkit.limits import check_lengths
    from toolkit.recipe import CalibrationSpec

    loaded = models.create_model("fake-llama")  # max_position_embeddings 1024
    recipe = SimpleNamespace(calibration=CalibrationSpec(seq_len=calib),  # a Recipe's fields
                             protocol=EvalProtocol(eval_len, 1))
    if flag is None:
        check_lengths(loaded, recipe)
        return
    with pytest.raises(UserError, match=f"{flag} .* context of 1024"):
        check_lengths(loaded, recipe)


def test_ignore_patterns_that_leave_nothing_are_refused(toolkit_cli, tmp_path):
    out = tmp_path / "out"
    one_line(toolkit_cli("compress", "--model", "fake-llama", "--method", "magnitude",
                         "--ignore", r"model\.layers\..*", "--out", out, *FAST_LLM),
             "--ignore leaves no linear", "narrow the patterns")
    assert not out.exists()


@pytest.mark.parametrize(("flag", "value"), [("--seq-len", 4096), ("--eval-seq-len", 4096)])
def test_compress_lengths_beyond_the_context_are_refused_before_work(toolkit_cli, tmp_path,
                                                                     flag, value):
    argv = ["compress", "--model", "fake-llama", "--out", str(tmp_path / "out"),
            "--calib-samples", "2", "--quiet", flag, str(value)]
    one_line(toolkit_cli(*argv), flag, "context of 1024")
    assert not (tmp_path / "out").exists()


def test_recipe_seed_beyond_64_bits_is_refused(toolkit_cli, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"calibration: {{samples: 2, seq_len: 16, seed: {2**64}}}\n"
                      "stages:\n  - {method: magnitude, sparsity: 0.5}\n", encoding="utf-8")
    one_line(toolkit_cli("run", str(recipe), "--model", "fake-llama",
                         "--out", str(tmp_path / "out")), "calibration seed", "2**63")
    assert not (tmp_path / "out").exists()
