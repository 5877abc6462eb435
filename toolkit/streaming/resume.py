"""Per-block checkpoints of a streaming run, so a run killed at any point (kill -9, power
loss, the OOM killer) continues from its last finished block when started again with the
same command, and writes the same bytes as a run that was never interrupted.

The run works in `.NAME.partial/` beside its output (a name the staging sweep of
models/staging.py leaves alone, because it is meant to outlive its process). After block
i it has, in this order, each written atomically (temporary name, fsync, rename):

    the block's output shard             model-000NN-of-000MM.safetensors
    the activations entering block i+1   resume/activations-0000i.safetensors
    the journal                          resume/journal.json

The journal is the commit point: a crash before it leaves the previous journal naming the
previous activations file, which is deleted only after the new journal is in place. The
journal holds the run's fingerprint (recipe, calibration tokens, forward dtype, threads,
the input checkpoint's headers and sizes: see `fingerprint`) and, per finished block, the
SHA-256 of the block's input tensors, of its output shard and of the activations. A
checkpoint is used only if all of them still match; otherwise it is discarded with one
line saying why, and the run starts over (or from the last block that still matches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from models.lazy.atomic_file import write_atomically
from models.lazy.crash_points import crash_point
from models.lazy.safetensors_write import write_safetensors

JOURNAL_VERSION = "edge-toolkit-stream-journal/1"
RESUME_DIR = "resume"


def partial_dir(out: Path) -> Path:
    """Where a streaming run for `out` keeps its work until it is complete."""
    return out.parent / f".{out.name}.partial"


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(parts: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything that decides the output."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass
class BlockEntry:
    index: int
    shard: str  # file name of the block's output shard
    shard_sha256: str
    source_sha256: str  # of the block's input tensors, as stored in the source
    stages: list[dict[str, Any]]  # each stage's record for the block (block_stages.py)
    writer: dict[str, Any]  # the shard writer's record and state after the block


@dataclasses.dataclass
class Resumed:
    """What a usable checkpoint gives back: the blocks to skip and their records, and
    the activations entering the first block still to do."""

    blocks: list[BlockEntry]
    streams: list[list[torch.Tensor]] | None

    @property
    def start(self) -> int:
        return len(self.blocks)


class Journal:
    def __init__(self, staging: Path, run_fingerprint: str) -> None:
        self.staging = staging
        self.dir = staging / RESUME_DIR
        self.path = self.dir / "journal.json"
        self.fingerprint = run_fingerprint
        self.blocks: list[BlockEntry] = []
        self.activations: str | None = None
        self.activations_sha256: str | None = None
        self.last_commit_bytes = 0  # activations + journal bytes of the last commit

    # -- reading a checkpoint ------------------------------------------------------------
    def resume(self, source_sha256, say=None) -> Resumed:
        """The checkpoint in the staging directory, checked; an empty one (start over)
        when there is none or it does not match. `source_sha256(index)` hashes block
        `index`'s input tensors as stored now."""
        say = say or (lambda line: print(line, file=sys.stderr))
        if not self.path.is_file():
            self._reset()
            return Resumed([], None)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != JOURNAL_VERSION:
                raise ValueError("written by another version")
            blocks = [BlockEntry(**b) for b in data["blocks"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            say(f"discarding the checkpoint in {self.staging}: its journal is unreadable "
                f"({exc}); starting over")
            self._reset()
            return Resumed([], None)
        if data.get("fingerprint") != self.fingerprint:
            say(f"discarding the checkpoint in {self.staging}: it was made by another "
                "command (recipe, calibration, dtype, threads or input weights differ); "
                "starting over")
            self._reset()
            return Resumed([], None)
        reason = self._check_blocks(blocks, source_sha256, data)
        if reason is not None:
            say(f"discarding the checkpoint in {self.staging}: {reason}; starting over")
            self._reset()
            return Resumed([], None)
        self.blocks = blocks
        self.activations = data.get("activations")
        self.activations_sha256 = data.get("activations_sha256")
        streams = self._read_activations() if self.activations else None
        if blocks:
            say(f"resuming from the checkpoint in {self.staging}: {len(blocks)} block(s) "
                "already done")
        return Resumed(blocks, streams)

    def _check_blocks(self, blocks: list[BlockEntry], source_sha256, data) -> str | None:
        for entry in blocks:
            shard = self.staging / entry.shard
            if not shard.is_file() or sha256_file(shard) != entry.shard_sha256:
                return (f"the output shard of block {entry.index} ({entry.shard}) is missing "
                        "or changed")
            if source_sha256(entry.index) != entry.source_sha256:
                return f"the input weights of block {entry.index} changed since it was done"
        name = data.get("activations")
        if name is not None:
            path = self.dir / name
            if not path.is_file() or sha256_file(path) != data.get("activations_sha256"):
                return "the saved activations are missing or damaged"
        return None

    def _read_activations(self) -> list[list[torch.Tensor]]:
        tensors = load((self.dir / self.activations).read_bytes())
        n_streams = 1 + max(int(k.split(".")[0][1:]) for k in tensors) if tensors else 0
        streams: list[list[torch.Tensor]] = [[] for _ in range(n_streams)]
        for key in sorted(tensors, key=lambda k: tuple(int(p[1:]) for p in k.split("."))):
            streams[int(key.split(".")[0][1:])].append(tensors[key])
        return streams

    def _reset(self) -> None:
        """Start over: the staging directory is emptied (only this run writes in it)."""
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.dir.mkdir(parents=True)
        self.blocks, self.activations, self.activations_sha256 = [], None, None

    # -- writing a checkpoint ------------------------------------------------------------
    def commit(self, entry: BlockEntry, streams: list[list[torch.Tensor]] | None) -> None:
        """Record a finished block whose shard is already on disk; save the activations
        entering the next block (None after the last block)."""
        previous = self.activations
        if streams:
            tensors = {f"s{s}.b{b}": h.detach().to("cpu").contiguous()
                       for s, hidden in enumerate(streams) for b, h in enumerate(hidden)}
            name = f"activations-{entry.index:05d}.safetensors"
            # written tensor by tensor: no second copy of the activations in memory
            self.activations_sha256 = write_safetensors(self.dir / name, tensors)
            crash_point("after-activations")
            self.activations = name
            self.last_commit_bytes = (self.dir / name).stat().st_size
        else:
            self.activations, self.activations_sha256 = None, None
            self.last_commit_bytes = 0
        self.blocks.append(entry)
        body = {"version": JOURNAL_VERSION, "fingerprint": self.fingerprint,
                "blocks": [dataclasses.asdict(b) for b in self.blocks],
                "activations": self.activations,
                "activations_sha256": self.activations_sha256}
        text = (json.dumps(body, indent=1) + "\n").encode()
        write_atomically(self.path, text)
        self.last_commit_bytes += len(text)
        crash_point("after-journal")
        if previous is not None and previous != self.activations:
            (self.dir / previous).unlink(missing_ok=True)

    def close(self) -> None:
        """The run is complete: the checkpoint is no longer needed."""
        shutil.rmtree(self.dir, ignore_errors=True)
