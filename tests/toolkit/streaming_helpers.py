"""What the streaming-engine tests share: tiny synthetic checkpoints on disk, the fast
command-line options, and reading every tensor of an artifact (sharded or not)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

# Two calibration windows of 16 tokens, no evaluation: the engine's logic, not its speed.
FAST = ["--calib-samples", "2", "--seq-len", "16", "--no-eval", "--quiet"]


def tiny_checkpoint(folder: Path, *, dtype=torch.float32, layers: int = 4,
                    shape: str = "tiny-llama-test", seed: int = 0) -> Path:
    from models.large_shapes import shape_named
    from models.synthetic_checkpoint import write_synthetic_checkpoint

    return write_synthetic_checkpoint(shape_named(shape), folder, dtype=dtype, seed=seed,
                                      layers=layers, max_shard_bytes=200_000)


def all_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def weight_hashes(directory: Path) -> dict[str, str]:
    """SHA-256 of every weight file and index: what "byte-identical output" compares."""
    files = [*directory.glob("*.safetensors"), *directory.glob("*.index.json")]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)}
