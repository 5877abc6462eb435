"""Writing a model one shard at a time, in Hugging Face's sharded layout.

The streaming engine finishes one decoder block at a time; each block becomes one shard
(`model-00002-of-00029.safetensors`), and the tensors outside the blocks (embeddings,
final norm, untied head) the first one. The shard count is known before the first block
is written (blocks + 1), so names never change and a resumed run writes the same files.
At the end `model.safetensors.index.json` maps every tensor to its shard.

Quantized linears are packed per shard the way models/families/llm_weights.py packs a
whole model: compressed-tensors "pack-quantized" tensors when transformers can hold them
exactly (then config.json gets the merged `quantization_config`), else Edge Toolkit's own
packing in shards named `edge_toolkit_quantized-*.safetensors`, which transformers never
opens. Each shard's metadata carries the layout of the linears it holds, so every shard
describes itself and the loader merges them.

Every shard is written to a temporary name, flushed to disk and renamed, so a crash or a
full disk leaves either the whole shard or none of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.lazy.atomic_file import write_atomically
from models.qformat import QUANT_METADATA_KEY, QuantizedWeight, encode_layout, packed_state_dict
from models.qformat.compressed_tensors import ct_quantization_config, ct_state_dict, set_blocker
from models.qformat.layout import CT_LAYOUT_FORMAT, LAYOUT_FORMAT

INDEX_SUFFIX = ".safetensors.index.json"
FLOAT_STEM = "model"
EDGE_STEM = "edge_toolkit_quantized"


def shard_name(stem: str, number: int, total: int) -> str:
    """HF's shard naming: `model-00001-of-00029.safetensors` (numbers from 1)."""
    return f"{stem}-{number:05d}-of-{total:05d}.safetensors"


class ShardedWriter:
    """Collects the weight map while shards are written; `finish` writes the index and
    the quantization config. The format (plain / compressed-tensors / Edge Toolkit
    packing) is fixed by the first shard that holds quantized linears."""

    def __init__(self, directory: Path, n_shards: int) -> None:
        self.directory = directory
        self.n_shards = n_shards
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.blocker: str | None = None
        self.quantized_any = False
        self._ct_groups: dict[str, dict[str, Any]] = {}

    @property
    def stem(self) -> str:
        return EDGE_STEM if self.blocker is not None else FLOAT_STEM

    def prepare(self, tensors: dict[str, torch.Tensor], quantized: dict[str, QuantizedWeight]
                ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
        """(state, metadata, record) of the shard for float `tensors` (full names) whose
        linears in `quantized` are replaced by their packed form; `record` restores the
        writer's weight map on resume."""
        if quantized and not self.quantized_any:
            self.quantized_any = True
            self.blocker = set_blocker(quantized)
        metadata = {"format": "pt"}
        if self.quantized_any and self.blocker is None and quantized:
            if set_blocker(quantized) is not None:
                raise ValueError("a block's quantized linears need another file format than "
                                 "the first block's: quantize every block the same way")
            state = ct_state_dict(tensors, quantized)
            metadata[QUANT_METADATA_KEY] = encode_layout(quantized, CT_LAYOUT_FORMAT)
            self._merge_ct_groups(ct_quantization_config(quantized))
        elif quantized:
            state = packed_state_dict(tensors, quantized)
            metadata[QUANT_METADATA_KEY] = encode_layout(quantized, LAYOUT_FORMAT)
        else:
            state = tensors
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        return state, metadata, {"names": sorted(state),
                                 "bytes": sum(v.numel() * v.element_size()
                                              for v in state.values())}

    def _merge_ct_groups(self, config: dict[str, Any]) -> None:
        for group in config["config_groups"].values():
            key = json.dumps(group["weights"], sort_keys=True)
            entry = self._ct_groups.setdefault(key, {**group, "targets": []})
            entry["targets"] = sorted(set(entry["targets"]) | set(group["targets"]))

    def add(self, number: int, record: dict[str, Any]) -> str:
        """Count shard `number` (from 1) as written; returns its file name."""
        name = shard_name(self.stem, number, self.n_shards)
        for tensor in record["names"]:
            self.weight_map[tensor] = name
        self.total_size += record["bytes"]
        return name

    def state(self) -> dict[str, Any]:
        """JSON state for a resume journal."""
        return {"blocker": self.blocker, "quantized_any": self.quantized_any,
                "ct_groups": self._ct_groups}

    def restore(self, state: dict[str, Any]) -> None:
        self.blocker = state["blocker"]
        self.quantized_any = state["quantized_any"]
        self._ct_groups = state["ct_groups"]

    def quantization_config(self) -> dict[str, Any] | None:
        """config.json's compressed-tensors `quantization_config`, or None."""
        if not self.quantized_any or self.blocker is not None:
            return None
        if len(self._ct_groups) > 1:
            self.blocker = ("linears with mixed bit widths or groups are dequantized by "
                            "transformers with a single scheme")
            return None
        groups = {f"group_{i}": g for i, g in enumerate(self._ct_groups.values())}
        return {"quant_method": "compressed-tensors", "format": "pack-quantized",
                "quantization_status": "compressed", "config_groups": groups, "ignore": [],
                "kv_cache_scheme": None, "dequantize": True}

    def finish(self) -> Path:
        """Write the index (every tensor -> its shard); returns its path."""
        index = self.directory / f"{self.stem}{INDEX_SUFFIX}"
        body = {"metadata": {"total_size": self.total_size},
                "weight_map": dict(sorted(self.weight_map.items()))}
        write_atomically(index, (json.dumps(body, indent=2) + "\n").encode())
        return index
