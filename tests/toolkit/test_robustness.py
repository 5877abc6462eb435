"""The command line tried as a careless user and as an attacker would (issue 14).

Every case holds one contract: exit code 2, exactly one line on stderr that names the input
and the fix, no traceback, nothing half-written and an existing file intact. The cases are
tables looped over commands x failure classes: bad output paths, operating-system failures,
out-of-range values, damaged cache entries, staging folders of killed runs, file modes,
corrupt files given to `bench`, and image folders.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
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


@pytest.mark.parametrize("failure", ["name too long", "parent is a file",
                                     "json is a directory", "not utf-8", "json is out"])
@pytest.mark.parametrize("command", list(command_lines(Path("/x"))))
def test_bad_output_paths_are_refused_before_any_work(toolkit_cli, tmp_path, command,
                                                      failure, monkeypatch):
    from toolkit.commands import (
        bench_cmd,
        compress_cmd,
        eval_cmd,
        export_cmd,
        models_cmd,
        run_cmd,
        train_cmd,
        train_portrait_job,
    )

    def no_work(args):
        raise AssertionError("the output paths must be checked before any work")

    for module, name in ((bench_cmd, "run"), (compress_cmd, "run"), (eval_cmd, "run"),
                         (export_cmd, "run"), (models_cmd, "run"), (run_cmd, "run"),
                         (train_cmd, "run_vmoe"), (train_portrait_job, "run_portrait")):
        monkeypatch.setattr(module, name, no_work)
    argv = command_lines(tmp_path)[command]
    overrides, words = bad_outputs(tmp_path)[failure]
    if failure == "json is out":
        if command in ("export", "eval", "models"):
            pytest.skip("no two outputs of this command can share a path")
        if command == "bench":
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


# --- damaged cache entries: rebuilt, with one line ----------------------------------------

def _truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: len(good) // 2])


def _garbage(path: Path, good: bytes) -> None:
    path.write_bytes(b"\x00\xffnot what was cached")


def _directory(path: Path, good: bytes) -> None:
    path.mkdir()
    (path / "inside").write_text("x")


def _wrong_json(path: Path, good: bytes) -> None:
    path.write_text('{"unexpected": [1, 2, 3]}')


def _wrong_shapes(path: Path, good: bytes) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({name: torch.zeros(2, 3, dtype=torch.int32)
               for name in ("calib_pool", "wiki_eval", "news_eval")}, str(path))


def _bad_header(path: Path, good: bytes) -> None:
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")


DAMAGES = {"truncated": _truncated, "garbage": _garbage, "directory": _directory,
           "wrong json": _wrong_json, "wrong shapes": _wrong_shapes,
           "bad safetensors header": _bad_header}


def _streams_cache(tmp: Path, monkeypatch):
    import torch

    from toolkit.data import streams

    fresh = streams.TokenStreams(torch.arange(10), torch.arange(5), torch.arange(7))
    monkeypatch.setattr(streams, "build_streams", lambda tokenizer: fresh)
    monkeypatch.setattr(streams, "_streams_key", lambda tokenizer: "k" * 32)

    def read():
        got = streams.cached_streams(object())
        return [got.calib_pool.tolist(), got.wiki_eval.tolist(), got.news_eval.tolist()]

    return tmp / "data" / f"streams-{'k' * 32}.safetensors", read


def _wikipedia_cache(tmp: Path, monkeypatch):
    from toolkit.data import wikipedia

    articles = [("A", "alpha text"), ("B", "beta text")]
    path = tmp / "data" / "wikipedia-test.json"
    monkeypatch.setattr(wikipedia, "build_wikipedia_articles", lambda dump: list(articles))
    monkeypatch.setattr(wikipedia, "wikipedia_cache_path", lambda dump: path)
    return path, wikipedia.wikipedia_articles


def _kick_cache(tmp: Path, monkeypatch):
    from toolkit.eval import kick_cache

    path = tmp / "eval" / "kick-test.json"
    result = {"ok": True}

    def fake_suite(loaded, protocol, **kwargs):
        return result

    class Result(dict):
        @classmethod
        def from_dict(cls, data):
            if set(data) != {"ok"}:
                raise KeyError("ok")
            return cls(data)

        def to_dict(self):
            return dict(self)

    monkeypatch.setattr(kick_cache, "KickResult", Result)
    monkeypatch.setattr(kick_cache, "run_kick_suite", lambda *a, **k: Result(result))
    monkeypatch.setattr(kick_cache, "cache_path", lambda *a: path)
    monkeypatch.setattr(kick_cache, "file_fingerprint", lambda spec: "f" * 64)

    def read():
        got, _hit = kick_cache.evaluate_kick("spec", None, load=lambda spec: None)
        return dict(got)

    return path, read


CACHES = {"token streams": (_streams_cache, ("truncated", "garbage", "directory",
                                             "wrong shapes", "bad safetensors header")),
          "wikipedia": (_wikipedia_cache, ("truncated", "garbage", "directory",
                                           "wrong json")),
          "kick results": (_kick_cache, ("truncated", "garbage", "directory", "wrong json"))}
CACHE_CASES = [(cache, damage) for cache, (_, damages) in CACHES.items()
               for damage in damages]


@pytest.mark.parametrize(("cache", "damage"), CACHE_CASES)
def test_damaged_cache_entries_are_rebuilt_with_one_line(tmp_path, monkeypatch, capsys,
                                                         cache, damage):
    monkeypatch.setenv("EDGE_TOOLKIT_CACHE", str(tmp_path))
    path, read = CACHES[cache][0](tmp_path, monkeypatch)
    expected = read()  # builds and caches
    assert path.is_file() and capsys.readouterr().err == ""
    good = path.read_bytes()
    path.unlink()
    DAMAGES[damage](path, good)
    assert read() == expected
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "rebuilt" in err[0]
    assert path.is_file() and path.read_bytes() == good  # the rebuilt entry is whole
    assert read() == expected and capsys.readouterr().err == ""  # and trusted next time


@pytest.mark.parametrize("cache", list(CACHES))
def test_a_read_only_cache_costs_time_not_the_result(tmp_path, monkeypatch, capsys, cache):
    import safetensors.torch

    monkeypatch.setenv("EDGE_TOOLKIT_CACHE", str(tmp_path))
    path, read = CACHES[cache][0](tmp_path, monkeypatch)
    expected = read()
    path.unlink()
    capsys.readouterr()

    def read_only(tensors, filename, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(filename))

    _fail_json_write(monkeypatch, errno.EROFS)
    monkeypatch.setattr(safetensors.torch, "save_file", read_only)
    assert read() == expected and read() == expected
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "Read-only file system" in err[0]
    assert "EDGE_TOOLKIT_CACHE" in err[0] and not path.exists()


@pytest.mark.parametrize("damage", ["truncated weights", "missing weights", "file"])
def test_damaged_default_model_cache_is_rebuilt(tmp_path, monkeypatch, capsys, damage):
    import torch

    import models
    from models import smollm2

    def fake_gguf(path):
        return models.create_model("fake-llama")

    monkeypatch.setattr(smollm2, "load_gguf", fake_gguf)
    monkeypatch.setattr(smollm2, "smollm2_gguf_path", lambda: tmp_path / "x.gguf")
    cached = tmp_path / "models" / "smollm2"
    # cloned: the loaded tensors may be memory-mapped from the file damaged below
    reference = {k: v.clone() for k, v in
                 smollm2._load_cached(cached).module.state_dict().items()}
    weights = cached / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing weights":
        weights.unlink()
    else:
        for p in cached.iterdir():
            p.unlink()
        cached.rmdir()
        cached.write_text("not a folder")
    capsys.readouterr()
    rebuilt = smollm2._load_cached(cached).module.state_dict()
    # (transformers' own loading bars are silenced by the CLI, not in this direct call)
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("toolkit:")]
    assert len(err) == 1 and "rebuilt" in err[0] and str(cached) in err[0]
    assert all(torch.equal(rebuilt[k], reference[k]) for k in reference)


def test_default_model_works_from_a_read_only_cache(tmp_path, monkeypatch, capsys):
    import torch

    import models
    from models import smollm2

    reference = models.create_model("fake-llama").module.state_dict()
    monkeypatch.setattr(smollm2, "load_gguf", lambda path: models.create_model("fake-llama"))
    monkeypatch.setattr(smollm2, "smollm2_gguf_path", lambda: tmp_path / "x.gguf")

    def read_only(loaded, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(target))

    monkeypatch.setattr(smollm2, "cache_as_safetensors", read_only)
    cached = tmp_path / "models" / "smollm2"
    loaded = smollm2._load_cached(cached)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cached) in err[0] and "Read-only" in err[0]
    state = loaded.module.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference)


# --- staging folders of killed runs -------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_of_dead_or_old_runs_is_swept(tmp_path, capsys):
    from toolkit.artifacts import save_artifact

    dead = tmp_path / f".a.staging-{_dead_pid()}-abcdefgh"
    live = tmp_path / f".b.staging-{os.getppid()}-abcdefgh"
    old_legacy = tmp_path / ".c.staging-k2j3h4g5"
    new_legacy = tmp_path / ".d.staging-k2j3h4g5"
    unrelated = tmp_path / ".e.something-abcdefgh"
    for folder in (dead, live, old_legacy, new_legacy, unrelated):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old_legacy, (two_days_ago, two_days_ago))
    save_artifact(tmp_path / "new", lambda staging: None, {"format": "test"})
    err = capsys.readouterr().err.strip().splitlines()
    assert sorted(err) == sorted(f"toolkit: removed stale staging dir {p} of a killed run"
                                 for p in (dead, old_legacy))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, new_legacy.name, unrelated.name, "new"])


def test_a_sigkilled_save_is_swept_by_the_next_run(tmp_path):
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from toolkit.artifacts import save_artifact\n"
        "def write(staging):\n"
        "    (staging / 'w.bin').write_bytes(b'half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        f"save_artifact(Path({str(tmp_path / 'art')!r}), write, {{}})\n")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    (left,) = [p for p in tmp_path.iterdir() if ".staging-" in p.name]
    assert f"-{child.pid}-" in left.name
    result = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; from toolkit.artifacts import "
         f"save_artifact; save_artifact(Path({str(tmp_path / 'art')!r}), lambda s: None, {{}})"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"removed stale staging dir {left} of a killed run" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_old_default_model_builds_are_swept(tmp_path, capsys):
    from models.cache import sweep_stale_builds

    target = tmp_path / "smollm2"
    old, recent, other = (tmp_path / ".smollm2.ab12cd34", tmp_path / ".smollm2.ef56gh78",
                          tmp_path / ".other.ab12cd34")
    for folder in (old, recent, other):
        folder.mkdir()
        os.utime(folder, (time.time() - 2 * 86400,) * 2 if folder != recent else None)
    sweep_stale_builds(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent.name, other.name])
    assert capsys.readouterr().err.strip() == \
        f"toolkit: removed stale staging dir {old} of a killed run"


# --- file modes and the run's temporary folder ------------------------------------------

@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"),
                         [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, dir_mode, file_mode):
    from toolkit.artifacts import MANIFEST, save_artifact
    from toolkit.commands.common import write_json

    previous = os.umask(umask)
    try:
        out = save_artifact(tmp_path / "art", lambda s: (s / "w.bin").write_bytes(b"1"), {})
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode
    for path in (out / MANIFEST, out / "w.bin", tmp_path / "r.json"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path


def test_a_run_keeps_its_temporary_files_in_its_own_folder(toolkit_cli, monkeypatch):
    from toolkit.commands import models_cmd

    seen = {}
    system_tmp = tempfile.gettempdir()
    tmpdir_before = os.environ.get("TMPDIR")

    def run(args):
        fd, name = tempfile.mkstemp()
        os.close(fd)
        seen.update(file=Path(name), env=os.environ["TMPDIR"])
        return 0

    monkeypatch.setattr(models_cmd, "run", run)
    assert toolkit_cli("models").code == 0
    run_dir = Path(seen["env"])
    assert seen["file"].parent == run_dir and run_dir.parent == Path(system_tmp)
    assert not run_dir.exists()  # removed with everything in it
    assert os.environ.get("TMPDIR") == tmpdir_before and tempfile.gettempdir() == system_tmp


# --- bench: corrupt model files, --quiet and progress ----------------------------------

def _tiny_onnx() -> bytes:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8).SerializeToString()


BENCH_FILES = {  # name -> (make it, words the line must hold)
    "truncated onnx": (lambda p: p.with_suffix(".onnx").write_bytes(_tiny_onnx()[:40]),
                       ".onnx", "re-export it with `toolkit export onnx"),
    "random bytes tflite": (lambda p: p.with_suffix(".tflite").write_bytes(os.urandom(256)),
                            ".tflite", "re-export it with `toolkit export tflite"),
    "empty onnx": (lambda p: p.with_suffix(".onnx").write_bytes(b""), ".onnx", "is empty"),
    "directory onnx": (lambda p: p.with_suffix(".onnx").mkdir(), ".onnx", "is a directory"),
}


@pytest.mark.parametrize("case", list(BENCH_FILES))
def test_corrupt_files_given_to_bench_name_the_fix(toolkit_cli, tmp_path, case):
    pytest.importorskip("onnxruntime")
    make, suffix, words = BENCH_FILES[case]
    make(tmp_path / "model")
    path = (tmp_path / "model").with_suffix(suffix)
    one_line(toolkit_cli("bench", path, "--runs", "1", "--warmup", "0", "--min-seconds", "0",
                         "--quiet"), str(path), words)


def test_bench_shows_progress_unless_quiet(toolkit_cli, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "relu.onnx"
    model.write_bytes(_tiny_onnx())
    fast = ["--runs", "3", "--warmup", "0", "--min-seconds", "0"]
    loud = toolkit_cli("bench", model, *fast)
    assert loud.code == 0, loud.err
    assert "load" in loud.err and "timed runs" in loud.err and "3/3" in loud.err
    quiet = toolkit_cli("bench", model, *fast, "--quiet")
    assert quiet.code == 0 and quiet.err == "" and "relu.onnx" in quiet.out


def test_every_command_accepts_quiet():
    from toolkit.cli import build_parser, leaf_parsers

    leaves = leaf_parsers(build_parser())
    assert len(leaves) >= 9  # compress run eval export bench models, train x3
    for leaf in leaves:
        assert "--quiet" in leaf._option_string_actions, leaf.prog


def test_expected_rounds_grow_until_min_seconds():
    from toolkit.bench.timing import expected_rounds

    assert expected_rounds(2, 0.5, 3, 0.0, None) == 3  # min_runs not reached
    assert expected_rounds(4, 1.0, 3, 2.0, None) == 8  # 1 s in 4 rounds, 2 s wanted
    assert expected_rounds(4, 1.0, 3, 2.0, 6) == 6  # capped
    assert expected_rounds(8, 2.0, 3, 2.0, None) == 8  # done


# --- image folders ------------------------------------------------------------------------

def _class_folder(root: Path, per_class: tuple[int, ...]) -> None:
    from PIL import Image

    for c, count in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), color=i * 10).save(root / f"class{c}" / f"{i}.png")


def _bomb(path: Path) -> None:
    from PIL import Image

    Image.new("1", (9000, 9000)).save(path)  # 81M pixels in a file of a few KB


def test_image_folder_with_too_few_images_per_class(tmp_path):
    from toolkit.data.images import MIN_IMAGES_PER_CLASS, folder_data

    _class_folder(tmp_path, (MIN_IMAGES_PER_CLASS, MIN_IMAGES_PER_CLASS - 1))
    with pytest.raises(UserError, match=f"class1 holds {MIN_IMAGES_PER_CLASS - 1} image"):
        folder_data(tmp_path, 8, 1)
    (tmp_path / "class1" / "extra.png").write_bytes((tmp_path / "class1" / "0.png")
                                                    .read_bytes())
    assert len(folder_data(tmp_path, 8, 1).classes) == 2


@pytest.mark.parametrize("reader", ["class folder", "portrait folder"])
def test_decompression_bomb_images_are_refused(tmp_path, reader):
    from PIL import Image

    from toolkit.data.images import folder_data
    from toolkit.data.portraits.folder import load_portrait_folder

    if reader == "class folder":
        _class_folder(tmp_path, (5, 5))
        bomb = tmp_path / "class1" / "bomb.png"
        _bomb(bomb)
        call = lambda: folder_data(tmp_path, 8, 1)  # noqa: E731
    else:
        (tmp_path / "images").mkdir()
        (tmp_path / "masks").mkdir()
        bomb = tmp_path / "images" / "0.png"
        _bomb(bomb)
        Image.new("L", (9000, 9000)).save(tmp_path / "masks" / "0.png")
        call = lambda: load_portrait_folder(tmp_path, 8, 8)  # noqa: E731
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(UserError, match=r"9000x9000 pixels, over the cap.*downscale"):
        call()
