"""One chunk of the decoder for LiteRT, built from a DecoderWeights (a model in memory, or
a checkpoint read one tensor at a time) with only its own layers.

    first:   input_ids [1, T] int, position [1], keys, values -> hidden [1, T, H], keys', values'
    middle:  hidden [1, T, H],     position [1], keys, values -> hidden [1, T, H], keys', values'
    last:    hidden [1, T, H],     position [1], keys, values -> logits [1, T, V], keys', values'
    one:     input_ids -> logits (the whole decoder)

keys/values: [layers of the chunk, kv_heads, max_context, head_dim] float32. LiteRT has no
state, so each chunk takes and returns its own layers' cache, as the one-file decoder
(export.llm.export_decoder) does for all of them; the arithmetic is that decoder's
(DecoderBlock, scatter cache write), so chunks run in sequence compute what it computes.

4-bit linears, and a head quantized to 4 bits at export (--embedding-bits 4, tied or
not), become BlockwiseLinear (export.litert.blockwise: int4 blockwise FCs, one per input
slice, plus a per-group correction and the outlier channels' float FC, the form LiteRT
runs without a float copy); a tied head then holds its own copy of the codes beside the
table's lookup. Other packed linears enter as their evaluated float
weights and get DEQUANTIZE (export.litert.weights), listed in `dequantized`. A linear's
LoRA adapter (DecoderWeights' LinearWeight.lora) rides along as a float side branch.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from export.coreml.chunk_plan import Chunk
from export.litert.blockwise import (
    INT8_SLICE,
    BlockwiseLinear,
    BlockwiseWeight,
    eligible,
    map_blockwise,
)
from export.litert.tables import NOTE as TABLE_NOTE
from export.litert.weights import Carry
from export.llm.decoder import DecoderBlock, ExportLinear, RMSNorm
from export.llm.decoder_weights import ATTENTION, MLP, DecoderWeights
from export.llm.export_decoder import step_inputs

_PLACEHOLDER = SimpleNamespace(weight=torch.zeros(1, 1), bias=None)


class LitertChunk(nn.Module):
    def __init__(self, weights: DecoderWeights, chunk: Chunk,
                 outliers: dict[str, list[int]] | None = None,
                 slice_width: int = INT8_SLICE):
        super().__init__()
        self.shape, self.chunk = weights.shape, chunk
        self.slice_width = slice_width  # inputs per int8 scale (export.litert.blockwise)
        self.mapped: dict[str, BlockwiseWeight] = {}  # source name -> int4 blockwise form
        self.blockwise: dict[str, BlockwiseLinear] = {}  # source name -> its module
        # source name -> input channels kept out of the int8 FC (export.litert.int8_outliers)
        self.outliers = dict(outliers or {})
        self.dequantized: dict[str, object] = {}  # source name -> packed (DEQUANTIZE form)
        self.register_buffer("inv_freq", weights.inv_freq.detach().float().clone())
        self.rope_scale = weights.rope_scale
        # record name -> the table or head quantized at export (--embedding-bits,
        # DecoderWeights.quantize_tables) with the float values the module holds, which
        # export.litert.weights finds in the file and replaces by the codes
        self.tables: dict[str, Carry] = {}
        # A head quantized to 4 bits at export (--embedding-bits 4, tied or not) runs as
        # int4 blockwise FCs like the block linears; a DEQUANTIZE'd head would be a float
        # weight computed at run time, which XNNPACK cannot pack, so the interpreter's own
        # float matrix-vector product read all of it in float32 at every decode step.
        head_codes = weights.embedding_packed if weights.tied else weights.head_packed
        head_blockwise = chunk.last and eligible(head_codes)
        table = (_table(weights) if chunk.first or (chunk.last and weights.tied
                                                     and not head_blockwise) else None)
        if table is not None and weights.embedding_packed is not None:
            tied_here = chunk.last and weights.tied and not head_blockwise
            if chunk.first:  # the lookup's GATHER over the codes (and a tied head's FC)
                self.tables[weights.module_name(weights.layout.embeddings)] = Carry(
                    table.numpy(), weights.embedding_packed, TABLE_NOTE,
                    tied_head=f"{weights.head_module} (tied)" if tied_here else None)
            elif not head_blockwise:  # a tied head in a later chunk: its FC's DEQUANTIZE
                self.tables[f"{weights.head_module} (tied)"] = Carry(
                    table.numpy(), weights.embedding_packed, TABLE_NOTE)
        self.embed = nn.Parameter(table, requires_grad=False) if chunk.first else None
        self.layers = nn.ModuleList(self._block(weights, i) for i in chunk.layers)
        self.norm = self.lm_head = self.head_table = None
        if chunk.last:
            self.norm = RMSNorm(SimpleNamespace(weight=weights.float32(weights.norm_name)),
                                weights.eps)
            if head_blockwise:
                name = f"{weights.head_module} (tied)" if weights.tied else weights.head_module
                bias = None if weights.tied else weights.linear(weights.head_module).bias
                self.lm_head = self._blockwise(name, head_codes, bias, None)
            elif weights.tied:
                self.head_table = (self.embed if chunk.first
                                   else nn.Parameter(table, requires_grad=False))
            elif weights.head_packed is not None:  # an untied float head, quantized at export
                head = weights.head_packed.dequantize().to(torch.float32)
                self.tables[weights.head_module] = Carry(head.numpy(), weights.head_packed,
                                                         TABLE_NOTE)
                self.lm_head = ExportLinear(SimpleNamespace(
                    weight=head, bias=weights.linear(weights.head_module).bias))
            else:
                self.lm_head = self._linear(weights, weights.head_module)
        self.eval()

    def _linear(self, weights: DecoderWeights, name: str) -> nn.Module:
        linear = weights.linear(name)
        if eligible(linear.packed):
            return self._blockwise(name, linear.packed, linear.bias, linear.lora)
        if linear.packed is not None:
            self.dequantized[name] = linear.packed
            weight = linear.packed.dequantize().to(torch.float32)
        else:
            weight = linear.weight
        return ExportLinear(SimpleNamespace(weight=weight, bias=linear.bias, lora=linear.lora))

    def _blockwise(self, name: str, packed, bias, lora) -> BlockwiseLinear:
        self.mapped[name] = map_blockwise(packed)
        self.blockwise[name] = BlockwiseLinear(self.mapped[name], bias, self.outliers.get(name),
                                               lora, self.slice_width)
        return self.blockwise[name]

    def set_outliers(self, outliers: dict[str, list[int]]) -> None:
        """Split these input channels off the blockwise FCs (export.litert.int8_outliers)."""
        self.outliers = dict(outliers)
        for name, linear in self.blockwise.items():
            linear.set_outliers(self.outliers.get(name))

    def _block(self, weights: DecoderWeights, index: int) -> DecoderBlock:
        names = weights.block_linear_names(index)
        before_attention, before_mlp = weights.block_norms(index)
        skeleton = SimpleNamespace(
            input_layernorm=SimpleNamespace(weight=before_attention),
            post_attention_layernorm=SimpleNamespace(weight=before_mlp),
            self_attn=SimpleNamespace(scaling=weights.shape.head_dim ** -0.5,
                                      **dict.fromkeys(ATTENTION, _PLACEHOLDER)),
            mlp=SimpleNamespace(**dict.fromkeys(MLP, _PLACEHOLDER)))
        block = DecoderBlock(skeleton, weights.shape, weights.eps, weights.activation)
        for short in ATTENTION:
            setattr(block.self_attn, short, self._linear(weights, names[short]))
        for short in MLP:
            setattr(block.mlp, short, self._linear(weights, names[short]))
        return block

    def emulate_runtime(self, on: bool = True) -> LitertChunk:
        """Quantize each blockwise FC's input as XNNPACK does (export.litert.blockwise)."""
        for module in self.modules():
            if isinstance(module, BlockwiseLinear):
                module.emulate = on
        return self

    def cache_shape(self) -> tuple[int, int, int, int]:
        s = self.shape
        return (len(self.chunk.layers), s.kv_heads, s.max_context, s.head_dim)

    def example_inputs(self, tokens: int) -> tuple[torch.Tensor, ...]:
        x = (torch.zeros(1, tokens, dtype=torch.long) if self.chunk.first
             else torch.zeros(1, tokens, self.shape.hidden))
        keys = torch.zeros(self.cache_shape())
        return x, torch.zeros(1, dtype=torch.long), keys, keys.clone()

    def forward(self, x: torch.Tensor, position: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor):
        positions, cos, sin, mask = step_inputs(position, x.shape[1], self.inv_freq,
                                                self.rope_scale, self.shape.max_context)
        h = self.embed[x[0]] if self.embed is not None else x[0]
        new_keys, new_values = [], []
        for index, layer in enumerate(self.layers):
            h, k, v = layer(h, cos, sin, mask, positions, keys[index], values[index])
            new_keys.append(k)
            new_values.append(v)
        if self.norm is not None:
            h = self.norm(h)
            h = h @ self.head_table.t() if self.head_table is not None else self.lm_head(h)
        return h.unsqueeze(0), torch.stack(new_keys), torch.stack(new_values)


def _table(weights: DecoderWeights) -> torch.Tensor:
    """The embedding table in float32: the values of its export-time codes when
    --embedding-bits quantized it (what the file's lookup and head compute with)."""
    if weights.embedding_packed is not None:
        return weights.embedding_packed.dequantize().to(torch.float32)
    return torch.from_numpy(np.concatenate(list(weights.embedding_blocks()), axis=0))
