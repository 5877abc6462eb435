"""One chunk of the decoder as a PyTorch module built from a DecoderWeights (a model in
memory, or a checkpoint read one tensor at a time), holding only its own layers.

    first chunk:  input_ids [1, T], position [1] -> hidden [1, T, hidden]   (table + layers)
    middle:       hidden [1, T, hidden], position [1] -> hidden [1, T, hidden]
    last:         hidden [1, T, hidden], position [1] -> logits [1, T, vocab] (layers + norm
                                                                             + head)
    one chunk:    input_ids, position -> logits (the whole decoder)

Each chunk owns the key/value cache of its layers, `keys`, `values` [n, kv_heads, C, D]
fp16 buffers updated in place (Core ML states), and recomputes the rotary tables and
mask from `position` (a few small ops, so nothing but the activation crosses chunks).
The arithmetic is export.llm.decoder's (the same DecoderBlock, cache written by
blend_write), so the chunks run in sequence compute what ExportDecoder computes.

Packed linears enter as their evaluated float weights (dequantize()); the exporter then
swaps each for its packed form, matched by value (export.coreml.llm._carry_weights),
and `quantized` lists them under the source model's names.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from export.coreml.chunk_plan import Chunk
from export.llm.decoder import DecoderBlock, ExportLinear, RMSNorm
from export.llm.decoder_weights import ATTENTION, MLP, DecoderWeights
from export.llm.export_decoder import step_inputs


class ChunkDecoder(nn.Module):
    def __init__(self, weights: DecoderWeights, chunk: Chunk):
        super().__init__()
        shape = weights.shape
        self.shape, self.chunk = shape, chunk
        self.quantized: dict[str, object] = {}  # source name -> packed weight
        self.source_names: dict[str, str] = {}  # export name -> source name (packed ones)
        self.register_buffer("inv_freq", weights.inv_freq.detach().float().clone())
        self.rope_scale = weights.rope_scale
        self.tables: dict[str, object] = {}  # record name -> packed table (at export)
        table = None
        if chunk.first or (chunk.last and weights.tied):
            table = _table(weights)
            if weights.embedding_packed is not None:
                # a tied head in a later chunk than the table is recorded as the head
                name = (weights.module_name(weights.layout.embeddings) if chunk.first
                        else weights.head_module)
                self.tables[name] = weights.embedding_packed
        self.embed = (nn.Parameter(table, requires_grad=False) if chunk.first else None)
        self.layers = nn.ModuleList(
            DecoderBlock(self._block(weights, i, j), shape, weights.eps, weights.activation,
                         "blend")
            for j, i in enumerate(chunk.layers))
        self.norm = self.lm_head = self.head_table = None
        if chunk.last:
            self.norm = RMSNorm(SimpleNamespace(weight=weights.float32(weights.norm_name)),
                                weights.eps)
            if weights.tied:  # the first chunk's parameter when the model is one chunk
                self.head_table = (self.embed if chunk.first
                                   else nn.Parameter(table, requires_grad=False))
            else:
                self.lm_head = ExportLinear(self._linear(weights, weights.head_module,
                                                         "lm_head"))
                if weights.head_packed is not None:
                    self.tables[weights.head_module] = weights.head_packed
        keys = torch.zeros(len(chunk.layers), shape.kv_heads, shape.max_context,
                           shape.head_dim, dtype=torch.float16)
        self.register_buffer("keys", keys)
        self.register_buffer("values", keys.clone())
        self.eval()

    def _linear(self, weights: DecoderWeights, module_name: str, export_name: str):
        linear = weights.linear(module_name)
        if module_name == weights.head_module and weights.head_packed is not None:
            weight = weights.head_packed.dequantize()  # quantized at export (tables)
        elif linear.packed is not None:
            weight = linear.packed.dequantize().to(torch.float32)
            self.quantized[module_name] = linear.packed
            self.source_names[export_name] = module_name
        else:
            weight = linear.weight
        return SimpleNamespace(weight=weight, bias=linear.bias, lora=linear.lora)

    def _block(self, weights: DecoderWeights, index: int, local: int) -> SimpleNamespace:
        """Block `index` as the attribute tree DecoderBlock reads (HF's names)."""
        names = weights.block_linear_names(index)
        before_attention, before_mlp = weights.block_norms(index)

        def linear(part: str, short: str):
            return self._linear(weights, names[short], f"layers.{local}.{part}.{short}")

        attention = {short: linear("self_attn", short) for short in ATTENTION}
        return SimpleNamespace(
            input_layernorm=SimpleNamespace(weight=before_attention),
            post_attention_layernorm=SimpleNamespace(weight=before_mlp),
            self_attn=SimpleNamespace(scaling=weights.shape.head_dim ** -0.5, **attention),
            mlp=SimpleNamespace(**{short: linear("mlp", short) for short in MLP}))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.run(input_ids, position)

    def run(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """`x`: input_ids [1, T] (first chunk) or hidden [1, T, hidden]."""
        positions, cos, sin, mask = step_inputs(position, x.shape[1], self.inv_freq,
                                                self.rope_scale, self.shape.max_context)
        h = self.embed[x[0]] if self.embed is not None else x[0].to(torch.float32)
        new_keys, new_values = [], []
        for index, layer in enumerate(self.layers):
            h, k, v = layer(h, cos, sin, mask, positions, self.keys[index].float(),
                            self.values[index].float())
            new_keys.append(k)
            new_values.append(v)
        self.keys.copy_(torch.stack(new_keys).half())
        self.values.copy_(torch.stack(new_values).half())
        if self.norm is None:
            return h.unsqueeze(0)
        h = self.norm(h)
        logits = h @ self.head_table.t() if self.head_table is not None else self.lm_head(h)
        return logits.unsqueeze(0)


class LaterChunkDecoder(ChunkDecoder):
    """A chunk after the first: the same module under its package's input name (torch.export
    keeps the argument names, and Core ML's states must be the module's own buffers)."""

    def forward(self, hidden: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.run(hidden, position)


def chunk_module(weights: DecoderWeights, chunk: Chunk) -> ChunkDecoder:
    return (ChunkDecoder if chunk.first else LaterChunkDecoder)(weights, chunk)


def _table(weights: DecoderWeights) -> torch.Tensor:
    """The embedding table in float32: the export-time dequantized values when
    --embedding-bits quantized it (what the file's constexpr op decompresses to)."""
    if weights.embedding_packed is not None:
        return weights.embedding_packed.dequantize()
    import numpy as np

    return torch.from_numpy(np.concatenate(list(weights.embedding_blocks()), axis=0))
