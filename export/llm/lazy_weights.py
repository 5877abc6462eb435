"""A Llama-family decoder's weights as an exporter reads them from a lazily opened
checkpoint: one tensor at a time, in float32 or in the artifact's packed form, never the
whole model.

The checkpoint is a models.lazy.LazyCheckpoint (a Hugging Face directory, float or
sharded, a packed artifact of `toolkit compress`, or a GGUF file). Its config builds a
meta-device skeleton (models.lazy.skeleton.StreamingDecoder), which gives the stored names,
the block layout and the rotary tables without reading a weight (export.llm.decoder_weights
holds the checks and names shared with a model in memory).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from export.llm.decoder_weights import ATTENTION, MLP, DecoderWeights, LinearWeight
from models.lazy.packed_source import PackedSource
from models.lazy.skeleton import StreamingDecoder
from models.qformat.lora import LORA_FILE, read_adapters

__all__ = ["ATTENTION", "MLP", "LazyDecoderWeights", "LinearWeight"]

ROW_BLOCK_BYTES = 64 << 20  # float32 bytes of embedding rows converted at once


class LazyDecoderWeights(DecoderWeights):
    """Shape, rotary tables and per-tensor reads of a lazily opened decoder LM."""

    def __init__(self, lazy, max_context: int) -> None:
        self.lazy = lazy
        self.skeleton = StreamingDecoder(lazy.source, lazy.config)
        super().__init__(self.skeleton.model, self.skeleton.layout, lazy.config, max_context)
        self._packed = self.quantized_layers()
        stored = self.skeleton.stored_name
        self.embedding_name = stored(self.module_name(self.layout.embeddings) + ".weight")
        self.head_weight_name = stored(self.head_module + ".weight")
        self.norm_name = stored(self.module_name(self.layout.norm) + ".weight")
        self.tied = self.head_weight_name == self.embedding_name
        # LoRA adapters beside the packed weights (small: read whole, checked against the
        # skeleton's linears); carried as side branches like the in-memory writer's.
        self._lora = (read_adapters(lazy.path / LORA_FILE, self.skeleton.model)
                      if lazy.path.is_dir() and (lazy.path / LORA_FILE).is_file() else {})

    def quantized_layers(self) -> dict[str, dict]:
        """Packed linear -> its layout entry (scheme, bits, ...); empty for float weights."""
        source = self.lazy.source
        return dict(source.layers) if isinstance(source, PackedSource) else {}

    def float32(self, name: str) -> torch.Tensor:
        """Stored tensor `name` in float32 (from_pretrained(dtype=float32)'s exact upcast)."""
        return self.lazy.source.read(name).to(torch.float32)

    def embedding_shape(self) -> tuple[int, int]:
        return tuple(self.lazy.source.infos()[self.embedding_name].shape)

    def embedding_blocks(self) -> Iterator[np.ndarray]:
        """The embedding table in float32, `ROW_BLOCK_BYTES` of rows at a time: a
        128256 x 3072 table (1.6 GB in float32) is never held whole."""
        rows, width = self.embedding_shape()
        step = max(1, ROW_BLOCK_BYTES // (4 * width))
        read_rows = getattr(self.lazy.source, "rows", None)
        if read_rows is None:  # a source without row reads (GGUF): the whole tensor
            yield self.float32(self.embedding_name).numpy()
            return
        for begin in range(0, rows, step):
            index = torch.arange(begin, min(rows, begin + step))
            yield read_rows(self.embedding_name, index).to(torch.float32).numpy()

    def linear(self, module_name: str) -> LinearWeight:
        """The linear `module_name` (e.g. "model.layers.0.self_attn.q_proj")."""
        infos = self.lazy.source.infos()
        bias_name = f"{module_name}.bias"
        bias = self.float32(bias_name) if bias_name in infos else None
        adapter = self._lora.get(module_name)
        lora = None if adapter is None else (adapter.lora_A.detach().float(),
                                             adapter.lora_B.detach().float(), adapter.scale)
        if module_name in self._packed:
            return LinearWeight(module_name, None, self.lazy.source.packed(module_name), bias,
                                lora)
        weight = self.float32(self.skeleton.stored_name(f"{module_name}.weight"))
        return LinearWeight(module_name, weight, None, bias, lora)
