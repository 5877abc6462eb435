"""One decoder block's attention in standard ONNX ops, with the stacked cache of
export.onnx.cache_io (`--onnx-attention standard`, and any head width onnxruntime's
GroupQueryAttention does not take): a file any ONNX runtime runs.

Per block (x: [T, hidden] at positions p .. p+T-1; H heads, K kv heads, D head_dim):

    q, k, v = x Wq^T, x Wk^T, x Wv^T  -> [H|K, T, D]       (+ bias where the model has one)
    q, k = q cos + rotate_half(q) sin, ...                 rotary at positions p .. p+T-1
    keys' = keys[layer] with rows p .. p+T-1 set to k      (ScatterElements on axis 1)
    a = softmax(q keys'^T * D^-1/2 + mask) values'         grouped: the H/K query heads of
                                                           one kv head as one matmul
    y = a Wo^T

`mask[t, c]` is 0 where c <= p + t and -1e4 elsewhere (export.llm.export_decoder.MASKED):
every step attends over all max_context rows, and the layers' caches are gathered from
and concatenated back into the stacked tensors (`finish`), a copy per token that the
fused attention (export.onnx.gqa_attention) avoids.
"""

from __future__ import annotations

import numpy as np

from export.llm.decoder_weights import ATTENTION
from export.llm.export_decoder import MASKED
from export.onnx.cache_io import STACKED_OUTPUTS

FLOAT = 1  # onnx TensorProto.FLOAT


class StandardAttention:
    """Writes each block's attention through `writer` (export.onnx.decoder_graph's
    _DecoderWriter); `finish()` writes the stacked present caches."""

    def __init__(self, writer, ids: str) -> None:
        self.writer, self.g, self.w = writer, writer.g, writer.w
        shape = self.w.shape
        self.heads, self.kv_heads, self.head_dim = shape.heads, shape.kv_heads, shape.head_dim
        self.keys: list[str] = []
        self.values: list[str] = []
        self._rotate_half: str | None = None
        self._inputs(ids)

    def _inputs(self, ids: str) -> None:
        """Positions, rotary tables, mask and the cache-write indices, once per graph."""
        g, w, f32 = self.g, self.w, self.writer.f32
        count = g.op("Shape", [ids], "tokens")
        steps = g.op("Range", [g.const(0), g.op("Squeeze", [count, g.const([0])]),
                               g.const(1)])
        positions = g.op("Add", ["position", steps], "positions")
        column = g.op("Unsqueeze", [positions, g.const([1])])
        freqs = g.op("Mul", [g.op("Cast", [column], to=FLOAT),
                             g.array("rotary.inv_freq", w.inv_freq.numpy()[None, :])])
        angles = g.op("Concat", [freqs, freqs], axis=-1)
        scale = f32(w.rope_scale)
        self.cos = g.op("Mul", [g.op("Cos", [angles]), scale], "cos")
        self.sin = g.op("Mul", [g.op("Sin", [angles]), scale], "sin")
        slots = g.const(np.arange(w.shape.max_context)[None, :], hint="slots")
        visible = g.op("LessOrEqual", [slots, column])
        self.mask = g.op("Where", [visible, f32(0.0), f32(MASKED)], "mask")
        index_shape = g.op("Concat", [g.const([self.kv_heads]), count,
                                      g.const([self.head_dim])], axis=0)
        self.write_at = g.op("Expand", [g.op("Reshape", [positions, g.const([1, -1, 1])]),
                                        index_shape], "cache_rows")

    def heads_first(self, x: str, heads: int) -> str:
        """[T, heads * D] -> [heads, T, D]."""
        g = self.g
        split = g.op("Reshape", [x, g.const([-1, heads, self.head_dim])])
        return g.op("Transpose", [split], perm=[1, 0, 2])

    def rotary(self, x: str) -> str:
        """x cos + rotate_half(x) sin, with rotate_half(x) = x R for the signed permutation
        R (R[j + D/2, j] = -1, R[j, j + D/2] = 1): one small MatMul instead of Split, Neg
        and Concat, exact (one non-zero term per output); at decode every node costs
        dispatch time, so fewer nodes per layer is faster."""
        g = self.g
        if self._rotate_half is None:
            half = self.head_dim // 2
            rotation = np.zeros((self.head_dim, self.head_dim), dtype=np.float32)
            rotation[np.arange(half) + half, np.arange(half)] = -1.0
            rotation[np.arange(half), np.arange(half) + half] = 1.0
            self._rotate_half = g.array("rotary.rotate_half", rotation)
        rotated = g.op("MatMul", [x, self._rotate_half])
        return g.op("Add", [g.op("Mul", [x, self.cos]), g.op("Mul", [rotated, self.sin])])

    def __call__(self, h: str, index: int, linears: dict[str, str]) -> str:
        g, w, writer = self.g, self.w, self.writer
        q, k, v = (writer.linear(h, w.linear(linears[n])) for n in ATTENTION[:3])
        q = self.rotary(self.heads_first(q, self.heads))
        k = self.rotary(self.heads_first(k, self.kv_heads))
        v = self.heads_first(v, self.kv_heads)
        layer = g.const(index, hint="layer")
        keys = g.op("ScatterElements", [g.op("Gather", ["past_keys", layer], axis=0),
                                        self.write_at, k], f"keys.{index}", axis=1)
        values = g.op("ScatterElements", [g.op("Gather", ["past_values", layer], axis=0),
                                          self.write_at, v], f"values.{index}", axis=1)
        self.keys.append(g.op("Unsqueeze", [keys, g.const([0])]))
        self.values.append(g.op("Unsqueeze", [values, g.const([0])]))
        context = w.shape.max_context
        stacked = g.op("Reshape", [q, g.const([self.kv_heads, -1, self.head_dim])])
        scores = g.op("MatMul", [stacked, g.op("Transpose", [keys], perm=[0, 2, 1])])
        scores = g.op("Reshape", [scores, g.const([self.heads, -1, context])])
        scaling = writer.f32(self.head_dim ** -0.5)
        scores = g.op("Add", [g.op("Mul", [scores, scaling]), self.mask])
        probs = g.op("Softmax", [scores], axis=-1)
        probs = g.op("Reshape", [probs, g.const([self.kv_heads, -1, context])])
        attended = g.op("MatMul", [probs, values])
        attended = g.op("Reshape", [attended, g.const([self.heads, -1, self.head_dim])])
        attended = g.op("Transpose", [attended], perm=[1, 0, 2])
        attended = g.op("Reshape", [attended, g.const([-1, self.heads * self.head_dim])])
        return writer.linear(attended, w.linear(linears["o_proj"]))

    def finish(self) -> None:
        """present_keys / present_values: every layer's cache stacked back."""
        from onnx import helper

        for name, layers in zip(STACKED_OUTPUTS[1:], (self.keys, self.values), strict=True):
            self.g.node(helper.make_node("Concat", layers, [name], name=name, axis=0))
