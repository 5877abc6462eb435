"""The `lora` stage under the streaming engine (compress/streaming.py): block-wise LoRA
(compress/recovery/lora_block.py) on each block's compressed linears, the ones an earlier
quantization stage packed or pruning stage pruned in this block.

The engine hands the stage each block after the earlier stages, the activations entering
it on the stage's own stream (the compressed model upstream, its adapters included) and
the dense block's outputs (targets). Adapters stay attached while the block computes the
next block's inputs, then leave memory with the block: their fp16 values are kept (a 3B
model's rank-16 adapters are ~70 MB) and written once at the end as
`lora_adapters.safetensors` (models/qformat/lora.py), the file the in-memory stage writes.
Each block's adapters also go into its journal record (base64 fp16), so a resumed run
rebuilds the file without the finished blocks; A's initialisation and the micro-batch
order are seeded per block (seed, block index), so a resumed run draws what an
uninterrupted one would.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.block_io import BlockInputs
from compress.block_stages import BlockStage, PruneStage, QuantStage
from compress.errors import CompressError
from compress.recovery.lora import LoraConfig
from compress.recovery.lora_block import train_block_adapters
from compress.recovery.lora_train import LoraReport
from models.qformat.lora import (
    LORA_FILE,
    LoraAdapter,
    adapter_bits_per_weight,
    adapter_summary,
    save_adapters,
)


class LoraBlockStage(BlockStage):
    kind = "lora"
    wants_dense_targets = True  # the engine keeps a dense activation stream for it

    def __init__(self, config: LoraConfig, previous: list[BlockStage], **kw) -> None:
        super().__init__(config, **kw)
        self.previous = [s for s in previous if isinstance(s, PruneStage | QuantStage)]
        if not self.previous:
            raise CompressError("lora needs linears compressed by an earlier stage of the "
                                "recipe (a quantization or pruning stage): e.g. --method "
                                "rtn ... --recover lora")
        self.adapters: dict[str, LoraAdapter] = {}  # full linear name -> fp16 values
        self._blocks: dict[int, dict[str, Any]] = {}
        self._weights = 0  # weights of the adapted linears
        self._start = time.perf_counter()

    @property
    def needs(self) -> frozenset[str]:
        return frozenset()  # no statistics: it learns from the block's outputs

    def keep(self, name: str) -> bool:
        return True

    def _compressed(self, index: int) -> set[str]:
        names: set[str] = set()
        for stage in self.previous:
            if isinstance(stage, QuantStage):
                names.update(stage.packed(index))
            else:  # the linears this block's pruning stage pruned (before block_record)
                names.update(stage._blocks.get(index, ((), ()))[0])  # noqa: SLF001
        return names

    def process_with_targets(self, index: int, prefix: str, block: nn.Module,
                             inputs: BlockInputs, targets: list) -> None:
        config: LoraConfig = self.config  # type: ignore[assignment]
        modules = dict(block.named_modules())
        linears = {}
        for full in sorted(self._compressed(index)):
            if config.targets and not any(re.search(t, full) for t in config.targets):
                continue
            linears[full[len(prefix) + 1:]] = modules[full[len(prefix) + 1:]]
        generator = torch.Generator().manual_seed(_block_seed(config.seed, index))
        adapters, report = train_block_adapters(
            block, inputs, targets, linears,
            dataclasses.replace(config, seed=_block_seed(config.seed, index)), generator)
        report["linears"] = len(adapters)
        for name, adapter in adapters.items():
            self.adapters[f"{prefix}.{name}"] = adapter
        self._weights += sum(m.in_features * m.out_features for m in linears.values())
        self._blocks[index] = {"report": report, "weights": sum(
            m.in_features * m.out_features for m in linears.values()),
            "adapters": {f"{prefix}.{n}": _encode(a) for n, a in adapters.items()}}

    def block_record(self, index: int) -> dict[str, Any]:
        return self._blocks[index]

    def restore_block(self, index: int, record: dict[str, Any]) -> None:
        self._blocks[index] = record
        self._weights += record["weights"]
        for name, encoded in record["adapters"].items():
            self.adapters[name] = _decode(encoded)

    def write_files(self, directory: Path) -> None:
        """The adapter file beside the shards (nothing when no block kept its adapters)."""
        if self.adapters:
            save_adapters(directory / LORA_FILE, self.adapters)

    def report(self) -> LoraReport:
        config: LoraConfig = self.config  # type: ignore[assignment]
        blocks = [self._blocks[i]["report"] for i in sorted(self._blocks)]
        section = {"kind": "lora", "method": LoraConfig.method, "variant": "block-wise",
                   "objective": "mean squared error of each block's output against the "
                                "dense block's (streaming engine)",
                   "alpha": config.alpha if config.alpha is not None else config.rank,
                   "block_steps": config.block_steps, "lr": config.lr,
                   "blocks": blocks,
                   "blocks_recovered": sum(b["outcome"] == "recovered" for b in blocks),
                   "adapter_bits_per_weight": adapter_bits_per_weight(self.adapters,
                                                                      self._weights)}
        if self.adapters:
            section.update(adapter_summary(self.adapters))
        else:
            section.update(rank=config.rank, scale=config.scale, parameters=0, bytes=0,
                           linears=0)
        return LoraReport({}, section, {"method": sum(b["seconds"] for b in blocks)},
                          self.forward_dtype)


def _block_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def _encode(adapter: LoraAdapter) -> dict[str, Any]:
    def pack(t: torch.Tensor) -> dict[str, Any]:
        array = t.detach().cpu().half().numpy()
        return {"shape": list(array.shape), "fp16": base64.b64encode(array.tobytes()).decode()}
    return {"A": pack(adapter.lora_A), "B": pack(adapter.lora_B), "scale": adapter.scale}


def _decode(encoded: dict[str, Any]) -> LoraAdapter:
    def unpack(entry: dict[str, Any]) -> torch.Tensor:
        array = np.frombuffer(base64.b64decode(entry["fp16"]), dtype=np.float16)
        return torch.from_numpy(array.reshape(entry["shape"]).astype(np.float32))
    return LoraAdapter(unpack(encoded["A"]), unpack(encoded["B"]), encoded["scale"])
