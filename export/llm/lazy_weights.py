"""A Llama-family decoder's weights as an exporter reads them from a lazily opened
checkpoint: one tensor at a time, in float32 or in the artifact's packed form, never the
whole model.

The checkpoint is a models.lazy.LazyCheckpoint (a Hugging Face directory, float or
sharded, a packed artifact of `toolkit compress`, or a GGUF file). Its config builds a
meta-device skeleton (models.lazy.skeleton.StreamingDecoder), which gives the stored names,
the block layout and the rotary tables without reading a weight; the checks and the shape
are the in-memory exporter's (export.llm.export_decoder), so both refuse the same models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from export.errors import ExportError
from export.llm.decoder import SUPPORTED_ACTIVATIONS, DecoderShape
from export.llm.export_decoder import _check_blocks, _decoder_shape, _rotary_module
from export.llm.moe_mlp import is_moe_mlp
from models.lazy.packed_source import PackedSource
from models.lazy.skeleton import StreamingDecoder

ROW_BLOCK_BYTES = 64 << 20  # float32 bytes of embedding rows converted at once
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class LinearWeight:
    """One linear of the checkpoint: `packed` (models.qformat) when the artifact stores it
    packed, else `weight` [out, in] in float32; `bias` [out] or None."""

    name: str  # the source module's name, e.g. "model.layers.3.mlp.up_proj"
    weight: torch.Tensor | None
    packed: object | None
    bias: torch.Tensor | None


class LazyDecoderWeights:
    """Shape, rotary tables and per-tensor reads of a lazily opened decoder LM."""

    def __init__(self, lazy, max_context: int) -> None:
        self.lazy = lazy
        config = lazy.config
        self.skeleton = StreamingDecoder(lazy.source, config)
        layout = self.skeleton.layout
        if layout.head is None or layout.norm is None:
            raise ExportError("the model has no final norm or LM head: the LLM exporter "
                              "supports causal Llama-style decoders only")
        if is_moe_mlp(layout.blocks[0].mlp):
            raise ExportError("mixture-of-experts models are exported from memory: pass "
                              "--engine memory")
        _check_blocks(layout.blocks, config)
        self.activation = getattr(config, "hidden_act", "silu")
        if self.activation not in SUPPORTED_ACTIVATIONS:
            raise ExportError(f"activation {self.activation!r} in the MLP is not supported by "
                              f"the LLM exporter: supported are "
                              f"{', '.join(SUPPORTED_ACTIVATIONS)}")
        self.shape: DecoderShape = _decoder_shape(config, max_context)
        self.eps = float(getattr(config, "rms_norm_eps", 1e-6))
        rotary = _rotary_module(self.skeleton.model)
        self.inv_freq = rotary.inv_freq.detach().float().clone()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self._packed = self.quantized_layers()
        name = self.skeleton.module_name
        self.embedding_name = self.skeleton.stored_name(name(layout.embeddings) + ".weight")
        self.head_module = name(layout.head)
        self.head_name = self.skeleton.stored_name(self.head_module + ".weight")
        self.norm_name = self.skeleton.stored_name(name(layout.norm) + ".weight")
        self.tied = self.head_name == self.embedding_name

    @property
    def n_blocks(self) -> int:
        return self.skeleton.n_blocks

    def parameter_count(self) -> int:
        return sum(param.numel() for param in self.skeleton.model.parameters())

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

    def block_norms(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.skeleton.block_prefix(index)
        return (self.float32(f"{block}.input_layernorm.weight"),
                self.float32(f"{block}.post_attention_layernorm.weight"))

    def linear(self, module_name: str) -> LinearWeight:
        """The linear `module_name` (e.g. "model.layers.0.self_attn.q_proj")."""
        infos = self.lazy.source.infos()
        bias_name = f"{module_name}.bias"
        bias = self.float32(bias_name) if bias_name in infos else None
        if module_name in self._packed:
            return LinearWeight(module_name, None, self.lazy.source.packed(module_name), bias)
        weight = self.float32(self.skeleton.stored_name(f"{module_name}.weight"))
        return LinearWeight(module_name, weight, None, bias)

    def block_linear_names(self, index: int) -> dict[str, str]:
        """Short name ("q_proj", ..., "down_proj") -> source module name in block `index`."""
        block = self.skeleton.block_prefix(index)
        linears = {name.rsplit(".", 1)[-1]: name
                   for name, module in self.skeleton.model.named_modules()
                   if isinstance(module, nn.Linear) and name.startswith(block + ".")}
        missing = [n for n in ATTENTION + MLP if n not in linears]
        if missing:
            raise ExportError(f"block {index} has no {missing[0]}: the LLM exporter supports "
                              "Llama-style decoder blocks only")
        return linears
