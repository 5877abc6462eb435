"""A streaming run killed anywhere resumes with the same command and writes the same
bytes as a run that was never interrupted.

Kills are real SIGKILLs of a `python -m toolkit` subprocess: at named crash points
(models/lazy/crash_points.py: half a shard on disk, a shard without its checkpoint,
activations without their journal, a journal just committed) and at random moments.
Every run uses one thread, so float sums are ordered the same in each process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.toolkit.streaming_helpers import tiny_checkpoint, weight_hashes

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--method", "gptq", "--bits", "4", "--group-size", "32", "--calib-samples", "2",
        "--seq-len", "16", "--no-eval", "--quiet", "--threads", "1", "--engine", "streaming"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("src") / "tiny", dtype=torch.bfloat16,
                           layers=6)


@pytest.fixture(scope="module")
def reference(toolkit_cli, source, tmp_path_factory):
    """An uninterrupted run (in-process: it also fills the token cache the subprocesses
    then read instead of tokenizing the built-in text again)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    result = toolkit_cli("compress", "--model", str(source), "--out", str(out), *ARGS)
    assert result.code == 0, result.err
    return weight_hashes(out)


def _run(source: Path, out: Path, *, crash: str | None = None, extra=()):
    env = dict(os.environ)
    env.pop("EDGE_TOOLKIT_CRASH_AT", None)
    if crash:
        env["EDGE_TOOLKIT_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "toolkit", "compress", "--model",
                           str(source), "--out", str(out), *ARGS, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_resumes_after_kills_at_every_crash_point(source, reference, tmp_path):
    out = tmp_path / "out put"
    for crash in ("mid-write:2", "after-shard:2", "after-activations:1", "after-journal:2"):
        killed = _run(source, out, crash=crash)
        assert killed.returncode == -signal.SIGKILL, (crash, killed.stderr)
        assert not out.exists()
    finished = _run(source, out)
    assert finished.returncode == 0, finished.stderr
    assert "resuming from the checkpoint" in finished.stderr
    assert weight_hashes(out) == reference
    assert not (tmp_path / ".out put.partial").exists()  # the checkpoint is gone


@pytest.mark.slow  # six subprocess runs killed at random moments: ~2 minutes
def test_resumes_after_kills_at_random_moments(source, reference, tmp_path):
    rng = random.Random(15)
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("EDGE_TOOLKIT_CRASH_AT", None)
    kills = 0
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-m", "toolkit", "compress", "--model",
                                    str(source), "--out", str(out), *ARGS], cwd=REPO,
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 2.5))  # a whole run takes ~3 s on an idle machine
        process.send_signal(signal.SIGKILL)
        kills += process.wait() == -signal.SIGKILL
        if out.exists():
            break
    assert kills >= 2  # the run really was interrupted, more than once
    if not out.exists():
        assert _run(source, out).returncode == 0
    assert weight_hashes(out) == reference


def test_checkpoint_of_another_recipe_is_discarded_in_one_line(source, tmp_path):
    out = tmp_path / "out"
    killed = _run(source, out, crash="after-journal:3")
    assert killed.returncode == -signal.SIGKILL
    changed = _run(source, out, extra=["--seed", "1"])  # another calibration draw
    assert changed.returncode == 0, changed.stderr
    lines = [line for line in changed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "discarding the checkpoint" in lines[0]
    assert "another command" in lines[0]


def test_changed_input_weights_discard_the_finished_blocks(source, tmp_path):
    import shutil

    own = tmp_path / "src"
    shutil.copytree(source, own)
    out = tmp_path / "out"
    assert _run(own, out, crash="after-journal:3").returncode == -signal.SIGKILL
    # Same headers and sizes, different values in block 0: only the content hash sees it.
    shard = sorted(own.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(8)
    shard.write_bytes(bytes(data))
    resumed = _run(own, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "discarding the checkpoint" in resumed.stderr
