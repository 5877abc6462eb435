"""Damaged, unwritable and abandoned files of the toolkit's own (issue 14): damaged cache
entries are rebuilt with one line, a read-only cache costs time and not the result, the
staging folders of killed runs are swept, outputs follow the umask, and a run's temporary
files stay in its own folder. Tables loop over caches x damage classes.
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

from tests.toolkit.test_robustness import REPO, _fail_json_write

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


@pytest.mark.parametrize("failure", ["read-only", "folder is a file"])
@pytest.mark.parametrize("cache", list(CACHES))
def test_an_unwritable_cache_costs_time_not_the_result(tmp_path, monkeypatch, capsys, cache,
                                                       failure):
    import shutil

    import safetensors.torch

    monkeypatch.setenv("EDGE_TOOLKIT_CACHE", str(tmp_path))
    path, read = CACHES[cache][0](tmp_path, monkeypatch)
    expected = read()
    path.unlink()
    capsys.readouterr()
    if failure == "folder is a file":  # real, no patching
        shutil.rmtree(path.parent)
        path.parent.write_text("a file where the cache folder belongs")
        reason = "File exists"  # mkdir finds a file at the folder's name
    else:  # root ignores chmod, so the writes are made to fail as on a read-only mount
        def read_only(tensors, filename, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(filename))

        _fail_json_write(monkeypatch, errno.EROFS)
        monkeypatch.setattr(safetensors.torch, "save_file", read_only)
        reason = "Read-only file system"
    assert read() == expected and read() == expected
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and reason in err[0]
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


def test_stale_temporary_report_files_are_swept(tmp_path, capsys):
    from toolkit.commands.common import write_json

    hex32 = "0123456789abcdef" * 2
    dead = tmp_path / f".r.json.{_dead_pid()}.{hex32}.tmp"
    live = tmp_path / f".r.json.{os.getppid()}.{hex32}.tmp"
    other = tmp_path / f".q.json.{_dead_pid()}.{hex32}.tmp"
    for path in (dead, live, other):
        path.write_text("{partial")
    write_json(tmp_path / "r.json", {"a": 1})
    assert capsys.readouterr().err.strip() == \
        f"toolkit: removed stale temporary file {dead} of a killed run"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name,
                                                                  "r.json"])


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


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(toolkit_cli, tmp_path,
                                                                    monkeypatch):
    """SIGKILL skips the run's own cleanup; the folder names its pid, so the next run
    removes the folders of dead pids and leaves a live process's folder alone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"toolkit-run-{int(gone.stdout)}-abc123"
    alive = tmp_path / f"toolkit-run-{os.getppid()}-def456"
    for folder in (dead, alive):
        (folder / "scratch").mkdir(parents=True)
    assert toolkit_cli("models").code == 0
    assert not dead.exists() and alive.exists()


def test_json_into_a_fifo_or_device_writes_into_it_not_over_it(tmp_path):
    """`--json /dev/stdout` (or a FIFO) is written into; an atomic rename would replace the
    device node itself."""
    import threading

    from toolkit.commands.common import write_json

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_json(fifo, {"a": 1})
    reader.join(timeout=30)
    assert json.loads(received[0]) == {"a": 1}
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(os.listdir(tmp_path)) == ["fifo"]


def test_a_killed_exports_staging_is_swept_by_the_next_export(toolkit_cli, tmp_path):
    """export.export_model stages beside --out under a pid-named folder, so the next
    export removes what a SIGKILLed one left (the same sweep as artifacts)."""
    out = tmp_path / "m.onnx"
    left = tmp_path / f".m.onnx.staging-{_dead_pid()}-abcdefgh"
    left.mkdir()
    (left / "m.onnx").write_bytes(b"half an onnx file")
    result = toolkit_cli("export", "onnx", "--model", "fake-cnn", "--out", str(out), "--quiet")
    assert result.code == 0, result.err
    assert f"removed stale staging dir {left} of a killed run" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
