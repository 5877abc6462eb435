"""One decoder block's attention as onnxruntime's com.microsoft GroupQueryAttention, the
per-layer cache layout of export.onnx.cache_io.

For a block with H query heads and K key/value heads of width D (x: [1, T, hidden], the
tokens at positions p .. p+T-1):

    qkv = x [Wq; Wk; Wv]^T (+ bias)             one MatMulNBits (export.onnx.fused_linears)
    q, k = rotary(q), rotary(k)                 cos/sin read from tables [max_context, D/2]
    keys[p .. p+T-1], values[...] = k, v        in place in the per-layer cache
    a = softmax(q keys^T * D^-1/2 + causal) values, each query head on kv head h // (H/K)
    y = a Wo^T

all inside one node per block (rotary, cache write, grouped causal attention over rows
0 .. p+T-1 only), where the standard-ops graph (export.onnx.decoder_graph) needs about 40
nodes and attends over all max_context rows under a mask. GroupQueryAttention takes
seqlens_k = p + T - 1 and total_sequence_length = p + T (int32) and derives the rotary
positions from them; its rotary is the rotate-half form (rotary_interleaved = 0) Llama
uses, with the tables precomputed here from the model's own inv_freq and attention scale
(so llama3 / linear / dynamic-free rope variants that DecoderWeights resolves all
carry). onnxruntime's CPU kernel needs D to be a multiple of 16 (checked at export).

With an int8 cache (`--kv-cache int8`) the node also takes one static scale per cache
channel for keys and values ([1, K, 1, D] constants, k_quant_type = v_quant_type =
PER_CHANNEL, kv_cache_bit_width = 8), measured on calibration text by
export.llm.kv_scales and given as `weights.kv_scales`; q/k/v and the output stay float32
(the kernel's int8 cache takes float32 activations).
"""

from __future__ import annotations

import numpy as np

from export.llm.decoder_weights import ATTENTION
from export.onnx.fused_linears import fuse_linears

FLOAT, FLOAT16, INT32 = 1, 10, 6  # onnx TensorProto element types
HEAD_DIM_MULTIPLE = 16  # onnxruntime's CPU GroupQueryAttention: head_size % 16 == 0


def rotary_tables(inv_freq: np.ndarray, scale: float, rows: int, dtype
                  ) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [rows, D/2]: cos(p * inv_freq_j) * scale for positions p < rows."""
    angles = np.arange(rows, dtype=np.float64)[:, None] * inv_freq.astype(np.float64)[None]
    return ((np.cos(angles) * scale).astype(dtype), (np.sin(angles) * scale).astype(dtype))


class GqaAttention:
    """Writes each block's attention through `writer` (export.onnx.decoder_graph's
    _DecoderWriter: its graph builder, weights and linear writer)."""

    def __init__(self, writer, ids: str, names: dict[str, list[str]], cache_dtype: str):
        g, w = writer.g, writer.w
        self.writer, self.names = writer, names
        self.half = cache_dtype == "float16"
        self.int8 = cache_dtype == "int8"
        self.kv_scales = getattr(w, "kv_scales", None) if self.int8 else None
        if self.int8 and self.kv_scales is None:
            raise ValueError("an int8 cache needs weights.kv_scales "
                             "(export.llm.kv_scales.measure_kv_scales)")
        dtype = np.float16 if self.half else np.float32
        cos, sin = rotary_tables(w.inv_freq.numpy(), w.rope_scale, w.shape.max_context, dtype)
        self.cos, self.sin = g.array("rotary.cos_cache", cos), g.array("rotary.sin_cache", sin)
        count = g.op("Shape", [ids], "tokens")
        total = g.op("Add", ["position", count], "total_tokens")  # p + T, [1] int64
        last = g.op("Sub", [total, g.const([1])])
        self.seqlens = g.op("Cast", [last], "seqlens_k", to=INT32)
        self.total = g.op("Cast", [g.op("Squeeze", [total, g.const([0])])], "total_seq",
                          to=INT32)

    def __call__(self, h: str, index: int, linears: dict[str, str]) -> str:
        writer, g, w = self.writer, self.writer.g, self.writer.w
        parts = [w.linear(linears[n]) for n in ATTENTION[:3]]
        fused = fuse_linears(parts, f"{w.block_prefix(index)}.self_attn.qkv_proj")
        if fused is not None:
            packed_qkv = writer.linear(h, fused, parts)
            streams = [self._batched(packed_qkv), "", ""]
        else:
            streams = [self._batched(writer.linear(h, part)) for part in parts]
        shape = w.shape
        out = g.fresh(f"attention.{index}")
        inputs = [*streams, self.names["past_keys"][index], self.names["past_values"][index],
                  self.seqlens, self.total, self.cos, self.sin]
        int8 = {}
        if self.int8:  # inputs 9-11 (position ids, bias, head sink) are left out
            scales = [g.array(f"kv_scale.{kind}.{index}",
                              table[index][None, :, None, :].astype(np.float32))
                      for kind, table in (("key", self.kv_scales.keys),
                                          ("value", self.kv_scales.values))]
            inputs += ["", "", "", *scales]
            int8 = {"k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL",
                    "kv_cache_bit_width": 8}
        g.node(_node("GroupQueryAttention", inputs,
                     [out, self.names["present_keys"][index],
                      self.names["present_values"][index]],
                     num_heads=shape.heads, kv_num_heads=shape.kv_heads, do_rotary=1,
                     rotary_interleaved=0, scale=float(shape.head_dim ** -0.5), **int8))
        if self.half:
            out = g.op("Cast", [out], to=FLOAT)
        return writer.linear(out, w.linear(linears["o_proj"]))  # [1, T, heads * D]

    def finish(self) -> None:
        """Nothing to add: each block wrote its own present caches."""

    def _batched(self, x: str) -> str:
        """x [1, T, width] (the writer keeps a per-layer graph batched) in the cache's
        dtype."""
        return self.writer.g.op("Cast", [x], to=FLOAT16) if self.half else x


def _node(op_type: str, inputs: list[str], outputs: list[str], **attributes):
    from onnx import helper

    return helper.make_node(op_type, inputs, outputs, name=f"{outputs[1]}.{op_type}",
                            domain="com.microsoft", **attributes)
