"""Bad input to the streaming job, through the CLI: each is exit code 2 with exactly one
line on stderr naming the problem and the fix, and nothing half-made at --out.

A broken checkpoint (a shard missing, an index naming a tensor no shard holds, a shard cut
mid-tensor) is refused while its headers are read, before any work, so not even the
staging folder `.NAME.partial` appears. A full disk is met mid-run: the previous artifact
at --out stays as it was, the finished blocks stay in the staging folder with their
journal, and the same command run again resumes and writes the bytes an uninterrupted run
writes. A machine without the memory for one block is refused with the amount needed.
(A staging folder left by another recipe is tested in test_streaming_resume.py.)"""

from __future__ import annotations

import errno
import json
import re
import shutil

import pytest
import torch

from tests.toolkit.streaming_helpers import FAST, tiny_checkpoint, weight_hashes
from toolkit.streaming.memory import GIB, RUNTIME_BYTES

GPTQ = ["--method", "gptq", "--bits", "4", "--group-size", "32"]
LAYERS = 4  # input shards: 1 = embeddings, 2..5 = blocks 0..3; output: 1..4 blocks, 5 rest


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("src") / "tiny", dtype=torch.float32,
                           layers=LAYERS)


@pytest.fixture(scope="module")
def reference(toolkit_cli, source, tmp_path_factory):
    """The weight files of an uninterrupted run of the command the disk-full tests use."""
    out = tmp_path_factory.mktemp("ref") / "out"
    result = toolkit_cli("compress", "--model", str(source), "--out", str(out),
                         "--engine", "streaming", *GPTQ, *FAST)
    assert result.code == 0, result.err
    return weight_hashes(out)


def _compress(toolkit_cli, model, out, *extra):
    return toolkit_cli("compress", "--model", str(model), "--out", str(out),
                       "--engine", "streaming", *GPTQ, *FAST, *extra)


def _refused(result, *needles) -> str:
    assert result.code == 2, result.err
    assert len(result.err_lines) == 1, result.err
    assert result.err.startswith("toolkit compress: error: ")
    for needle in needles:
        assert needle in result.err, (needle, result.err)
    return result.err


def _nothing_at(out):
    assert not out.exists()
    assert not (out.parent / f".{out.name}.partial").exists()


def _shard(number: int) -> str:
    return f"model-{number:05d}-of-{LAYERS + 1:05d}.safetensors"


# --- a broken input checkpoint -------------------------------------------------------------


def _broken_copy(source, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(source, copy)
    return copy


def test_a_shard_missing_from_the_index(toolkit_cli, source, tmp_path):
    model = _broken_copy(source, tmp_path)
    (model / _shard(3)).unlink()
    out = tmp_path / "out"
    _refused(_compress(toolkit_cli, model, out), "missing", _shard(3),
             "restore the shard")
    _nothing_at(out)


def test_an_index_naming_a_tensor_no_shard_holds(toolkit_cli, source, tmp_path):
    model = _broken_copy(source, tmp_path)
    index_file = model / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.layers.1.mlp.extra_proj.weight"] = _shard(3)
    index_file.write_text(json.dumps(index))
    out = tmp_path / "out"
    _refused(_compress(toolkit_cli, model, out), "'model.layers.1.mlp.extra_proj.weight'",
             "lacks it", "restore the shard")
    _nothing_at(out)


def test_a_shard_truncated_mid_tensor(toolkit_cli, source, tmp_path):
    model = _broken_copy(source, tmp_path)
    shard = model / _shard(3)
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])  # the header is a few kB: this cuts the data
    out = tmp_path / "out"
    _refused(_compress(toolkit_cli, model, out), f"{shard.name} is truncated",
             f"holds {len(data) // 2 - _header_size(data)}", "re-download")
    _nothing_at(out)


def _header_size(data: bytes) -> int:
    """Bytes before the tensor data: the 8-byte length and the JSON header it gives."""
    return 8 + int.from_bytes(data[:8], "little")


# --- not enough memory ---------------------------------------------------------------------


def test_not_enough_memory_for_one_block(toolkit_cli, source, tmp_path, monkeypatch):
    import toolkit.streaming.job as job

    monkeypatch.setattr(job, "available_memory", lambda: 100 << 20)
    out = tmp_path / "out"
    err = _refused(_compress(toolkit_cli, source, out), "compressing one block",
                   "only 0.1 GB is available", "calibration activations",
                   "lower --calib-samples or --seq-len, or free memory")
    needed = float(re.search(r"needs about ([0-9.]+) GB", err).group(1))
    assert needed >= RUNTIME_BYTES / GIB - 0.05  # at least the interpreter and libraries
    _nothing_at(out)


# --- a full disk mid-run -------------------------------------------------------------------


def _fail_on_call(real, n: int):
    """`real`, except that its n-th call raises ENOSPC as a full disk does."""
    calls = []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return write


# (module, function, the line's words): the block shards (shard 3 = block 1; shards 1 and 2
# are done), and the resume checkpoint (3rd call: block 2's activations, after those of
# blocks 0 and 1)
WHERE = {
    "shard": ("toolkit.streaming.job", "write_safetensors", "could not write shard 3 of 5",
              2),
    "checkpoint": ("toolkit.streaming.resume", "write_safetensors",
                   "could not save the checkpoint after block 3 of 4", 2),
}


@pytest.mark.parametrize("where", list(WHERE))
def test_disk_full_keeps_the_artifact_and_resumes(toolkit_cli, source, reference, tmp_path,
                                                  monkeypatch, where):
    import importlib

    module_name, function, words, done = WHERE[where]
    out = tmp_path / "out"
    previous = toolkit_cli("compress", "--model", str(source), "--out", str(out),
                           "--engine", "streaming", "--method", "rtn", "--bits", "8", *FAST)
    assert previous.code == 0, previous.err
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    module = importlib.import_module(module_name)
    monkeypatch.setattr(module, function, _fail_on_call(getattr(module, function), 3))
    _refused(_compress(toolkit_cli, source, out, "--overwrite"), words,
             "No space left on device", "free space and run the same command again to resume")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # untouched
    staging = tmp_path / ".out.partial"
    journal = json.loads((staging / "resume" / "journal.json").read_text())
    assert [b["index"] for b in journal["blocks"]] == list(range(done))
    assert sorted(f.name for f in staging.glob("*.safetensors")) == \
        [b["shard"] for b in journal["blocks"]] + ([_shard(done + 1)] if where == "checkpoint"
                                                    else [])
    assert not list(staging.rglob(".*.tmp"))  # no half-written file left behind

    monkeypatch.undo()
    again = _compress(toolkit_cli, source, out, "--overwrite")
    assert again.code == 0, again.err
    assert again.err_lines == [f"resuming from the checkpoint in {staging}: {done} block(s) "
                               "already done"]
    assert weight_hashes(out) == reference
    assert not staging.exists()
