"""How much memory a job needs, how much the machine has, and which engine to use.

Estimates, in bytes, from shapes alone (no weights read):

    in-memory job      4 P   (the fp32 model) + calibration activations
    streaming job      the largest part held at once: one block in fp32 (+ a working
                       copy of its largest weight), its calibration statistics (a d_in^2
                       fp32 Hessian per linear for SparseGPT/GPTQ/AWQ/palettize), and the
                       activation streams (inputs and outputs of every stream:
                       2 S N L d fp32); the fp32 input embeddings during the block-0
                       capture; plus the interpreter and libraries
    whole-model distillation   5 x 4 P: student, its gradients, Adam's two moments, and
                       the teacher copy
    in-memory export   3 x 4 P: the model, the re-authored decoder, the converter's copy

where P is the parameter count, N x L the calibration windows, d the hidden size and S
the number of activation streams. The machine has min(MemAvailable, the cgroup's limit).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from torch import nn

from compress.stats import HESSIAN

GIB = 1 << 30
# Python, torch, transformers and the tokenizer, measured as the resident size of
# `toolkit compress --help` plus an imported transformers model class (~0.5 GB).
RUNTIME_BYTES = int(0.6 * GIB)
# Whole-model distillation holds the student, its gradients, Adam's two moments and the
# teacher: five fp32 copies of the weights.
DISTILL_COPIES = 5
EXPORT_COPIES = 3


def available_memory() -> int:
    """Bytes this process can still use: MemAvailable, capped by a cgroup v2/v1 limit."""
    available = _meminfo_available()
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            available = min(available, int(limit) - usage)
    return max(available, 0)


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def gib(n: int | float) -> str:
    return f"{n / GIB:.1f} GB"


@dataclasses.dataclass
class StreamingEstimate:
    block_bytes: int
    stats_bytes: int
    activation_bytes: int
    embedding_bytes: int

    @property
    def peak(self) -> int:
        working = self.block_bytes + self.stats_bytes + self.activation_bytes
        capture = self.embedding_bytes + self.activation_bytes
        return RUNTIME_BYTES + max(working, capture)

    def describe(self) -> str:
        return (f"one block {gib(self.block_bytes)}, its statistics {gib(self.stats_bytes)}, "
                f"calibration activations {gib(self.activation_bytes)}")


def streaming_estimate(decoder, needs: set[str], n_streams: int, calib_tokens: int,
                       batch_tokens: int) -> StreamingEstimate:
    """The streaming job's working set for `decoder` (models/lazy/skeleton.py)."""
    block = decoder.layout.blocks[0]
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    block_numel = sum(p.numel() for p in block.parameters())
    largest = max((m.weight.numel() for m in linears), default=0)
    block_bytes = 4 * (block_numel + 2 * largest)
    stats = 0
    if HESSIAN in needs:
        stats = sum(4 * m.in_features ** 2 for m in linears)
        stats += 3 * 4 * max((m.in_features ** 2 for m in linears), default=0)  # inverse
    hidden = int(decoder.config.hidden_size)
    inter = int(getattr(decoder.config, "intermediate_size", 4 * hidden))
    activations = 2 * n_streams * calib_tokens * hidden * 4
    # one micro-batch's forward temporaries: the MLP's gate/up/product (3 x intermediate)
    # and attention's projections (~6 x hidden) per token, fp32
    activations += batch_tokens * (3 * inter + 6 * hidden) * 4
    embeddings = decoder.layout.embeddings.weight.numel() * 4
    return StreamingEstimate(block_bytes, stats, activations, embeddings)


def in_memory_bytes(n_params: int, calib_tokens: int, hidden: int) -> int:
    return RUNTIME_BYTES + 4 * n_params + 2 * calib_tokens * hidden * 4


def export_in_memory_bytes(n_params: int) -> int:
    """An in-memory export: the fp32 model, the re-authored decoder's copy of its weights
    and the converter's copy (the ONNX protobuf, the LiteRT flatbuffer, the Core ML
    program): three fp32 copies."""
    return RUNTIME_BYTES + EXPORT_COPIES * 4 * n_params


def distill_bytes(n_params: int) -> int:
    return RUNTIME_BYTES + DISTILL_COPIES * 4 * n_params


def default_budget() -> int:
    """Half of what the machine has now: room for the OS, the page cache of the shards
    being read, and the user's other programs."""
    return available_memory() // 2
