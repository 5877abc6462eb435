"""`write_decoder_onnx`: a Llama-family decoder written to ONNX node by node, each weight
read when its node is written (from a model in memory, or from a lazily read checkpoint,
going to the external data file at once, so exporting a 3B or 7B model holds one tensor
at a time, not the model).

The traced exporter (export.onnx.llm) runs torch.onnx on export.llm.decoder.ExportDecoder,
which needs every weight in memory (and a few copies during tracing); it stays for
mixture-of-experts decoders. This writer builds the same graph by hand. With
`attention="standard"` it has the same contract

    inputs:  input_ids [1, T] int64, position [1] int64,
             past_keys, past_values [layers, kv_heads, max_context, head_dim] float32
    outputs: logits [1, T, vocab], present_keys, present_values

and by default (`"auto"`/`"fused"`) one cache per layer (both contracts:
export.onnx.cache_io). Per block (x: [T, hidden]):

    h = x / sqrt(mean(x^2) + eps) * g                     RMSNorm (fp32)
    x = x + attention(h)                                  export.onnx.gqa_attention (one
                                                          GroupQueryAttention node) or
                                                          export.onnx.standard_attention
    x = x + Wd (silu(h2 Wg^T) * h2 Wu^T)                  h2 = RMSNorm(x)
    logits = RMSNorm(x) E^T (tied head, as Gemm with transB: E is stored once)

q/k/v and gate/up that share a format are one stacked matmul (export.onnx.fused_linears).
Packed linears go in as export.onnx.weights builds them (MatMulNBits, palette Gather);
float ones as MatMul with the transposed weight. The norms are written as Pow, ReduceMean,
Add, Sqrt, Div, Mul, the pattern onnxruntime fuses into SimplifiedLayerNormalization.

With the per-layer cache (onnxruntime's contrib ops, so the file needs onnxruntime
already) the hidden state is [1, T, hidden] from the lookup to the logits, so no Reshape or
Unsqueeze sits between a block's matmuls and GroupQueryAttention, and each residual add and
the norm after it are one SkipSimplifiedLayerNormalization (outputs: the normalized sum and
the sum itself). A SmolLM2 decode step runs about 120 fewer kernels (of about 440), and at
one thread a kernel launch costs a few microseconds against the ~10 ms step.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from export.errors import ExportError, require
from export.llm.decoder_weights import MLP, DecoderWeights, LinearWeight
from export.onnx.cache_io import (
    KV_CACHE_DTYPES,
    LLM_METADATA_KEY,
    PER_LAYER,
    STACKED,
    STACKED_INPUTS,
    STACKED_OUTPUTS,
    io_description,
    per_layer_names,
)
from export.onnx.external_data import ExternalDataWriter
from export.onnx.fused_linears import fuse_linears
from export.onnx.gqa_attention import HEAD_DIM_MULTIPLE, GqaAttention
from export.onnx.graph_builder import GraphBuilder
from export.onnx.llm import OPSET, OnnxExport
from export.onnx.shared_table import SHARED_BITS, shared_lookup
from export.onnx.standard_attention import StandardAttention
from export.onnx.weights import (
    compressed_weight,
    gather_block_quantized,
    matmul_nbits,
    matmul_nbits_block,
    set_accuracy_level,
)
from export.records import LayerRecord

IR_VERSION = 10  # opset 21 needs IR 10; onnxruntime 1.2x reads it


class _DecoderWriter:
    def __init__(self, weights: DecoderWeights, graph: GraphBuilder, layout: str,
                 cache_dtype: str) -> None:
        self.w = weights
        self.g = graph
        self.layout, self.cache_dtype = layout, cache_dtype
        # [1, T, hidden] activations and fused residual norms (contrib ops): per-layer only
        self.batched = layout == PER_LAYER
        self.carried: list[LayerRecord] = []
        self.dropped: list[LayerRecord] = []

    # --- pieces ----------------------------------------------------------------------------

    def f32(self, value: float) -> str:
        return self.g.const(value, np.float32, "f32")

    def rms_norm(self, x: str, weight: torch.Tensor, name: str) -> str:
        g = self.g
        squared = g.op("Pow", [x, self.f32(2.0)])
        mean = g.op("ReduceMean", [squared, g.const([-1])], keepdims=1)
        root = g.op("Sqrt", [g.op("Add", [mean, self.f32(self.w.eps)])])
        gain = g.array(name, weight.numpy())
        return g.op("Mul", [g.op("Div", [x, root]), gain], f"{name}.out")

    def residual_norm(self, x: str, delta: str | None, weight: torch.Tensor, name: str,
                      hint: str) -> tuple[str, str]:
        """(RMSNorm(x + delta), x + delta); x alone when `delta` is None. Batched graphs
        compute both in one com.microsoft SkipSimplifiedLayerNormalization (its outputs 0
        and 3), the same float arithmetic as Add then the norm."""
        g = self.g
        if delta is None:
            return self.rms_norm(x, weight, name), x
        if not self.batched:
            x = g.op("Add", [x, delta], hint)
            return self.rms_norm(x, weight, name), x
        gain = g.array(name, weight.numpy())
        normed, total = g.fresh(f"{name}.out"), g.fresh(hint)
        g.node(_make_node("SkipSimplifiedLayerNormalization", [x, delta, gain],
                          [normed, "", "", total], domain="com.microsoft",
                          epsilon=float(self.w.eps)))
        return normed, total

    def linear(self, x: str, linear: LinearWeight,
               parts: list[LinearWeight] | None = None) -> str:
        """x W^T (+ b). `parts`: the source linears `linear` stacks (fused_linears), each
        recorded under its own name with the form it is carried in (the stack changes
        the graph, not any weight's form)."""
        g, prefix = self.g, linear.name
        names = [p.name for p in parts] if parts else [prefix]
        y = g.fresh(f"{prefix}.out")
        weight = linear.weight
        if linear.packed is not None:
            built = compressed_weight(linear.packed, x, y, prefix)
            if built is not None:
                self.add(built, names, built.carried_as)
            else:
                self.dropped.extend(LayerRecord(name, "float: no ONNX op carries "
                                                      f"{linear.packed.meta()}")
                                    for name in names)
                weight = linear.packed.dequantize().to(torch.float32)
        if weight is not None:
            weight_t = g.array(f"{prefix}.weight_t", weight.t().contiguous().numpy())
            g.node(_make_node("MatMul", [x, weight_t], [y]))
        if linear.lora is not None:
            y = self.lora(x, y, linear)
        if linear.bias is not None:
            y = g.op("Add", [y, g.array(f"{prefix}.bias", linear.bias.numpy())])
        return y

    def lora(self, x: str, y: str, linear: LinearWeight) -> str:
        """y + s (x A^T) B^T: the LoRA side branch beside the linear's own op (LoRA,
        arXiv 2106.09685), A^T and B^T stored in float32 (the fp16 values exactly)."""
        g, prefix = self.g, linear.name
        a, b, scale = linear.lora
        a_t = g.array(f"{prefix}.lora_A_t", a.t().contiguous().numpy())
        b_t = g.array(f"{prefix}.lora_B_t", b.t().contiguous().numpy())
        low = g.op("MatMul", [x, a_t], f"{prefix}.lora_down")
        up = g.op("Mul", [g.op("MatMul", [low, b_t], f"{prefix}.lora_up"), self.f32(scale)])
        self.carried.append(LayerRecord(f"{prefix} (lora)", f"lora adapter r{a.shape[0]} "
                                                            "(MatMul side branch)"))
        return g.op("Add", [y, up], f"{prefix}.lora_out")

    def packed(self, build, weight, x: str, prefix: str) -> str:
        """A table or head quantized at export (export.llm.table_quant), built by `build`
        (gather_block_quantized or matmul_nbits); recorded as quantized here."""
        y = self.g.fresh(f"{prefix}.out")
        built = build(weight, x, y, prefix)
        self.add(built, [prefix], f"{built.carried_as} (quantized at export)")
        return y

    def shared_table(self, ids: str, table: str) -> str:
        """The tied table quantized at export, stored once as the head's MatMulNBits
        tensors, its token rows read from them (export.onnx.shared_table)."""
        w, packed = self.w, self.w.embedding_packed
        head = matmul_nbits(packed, "unused", "unused", w.head_module)
        for tensor in head.initializers:
            self.g.initializer(tensor)
        rows, width = packed.shape
        block = matmul_nbits_block(packed.group_size)
        zero_points = any(t.name.endswith(".zero_points") for t in head.initializers)
        self.carried.append(LayerRecord(
            table, f"rows of the head's MatMulNBits {packed.bits}-bit, block {block} "
                   "(quantized at export)"))
        self.carried.append(LayerRecord(w.head_module, f"{head.carried_as} (quantized at "
                                                       "export, shared with the table)"))
        return shared_lookup(self.g, ids, w.head_module, rows, width, packed.bits, block,
                             zero_points)

    def add(self, built, names: list[str], carried_as: str) -> None:
        """The nodes and initializers of an export.onnx.weights builder, and the record
        of each source layer it carries."""
        for tensor in built.initializers:
            self.g.initializer(tensor)
        for node in built.nodes:
            self.g.node(node)
        self.carried.extend(LayerRecord(name, carried_as) for name in names)

    # --- the model -------------------------------------------------------------------------

    def mlp(self, h: str, linears: dict[str, str]) -> str:
        g, w = self.g, self.w
        parts = [w.linear(linears["gate_proj"]), w.linear(linears["up_proj"])]
        fused = fuse_linears(parts, linears["gate_proj"].rsplit(".", 1)[0] + ".gate_up_proj")
        if fused is not None:
            gate, up = g.op("Split", [self.linear(h, fused, parts)], "gate_up", outputs=2,
                            axis=-1, num_outputs=2)
        else:
            gate, up = (self.linear(h, part) for part in parts)
        activated = g.op("Mul", [gate, g.op("Sigmoid", [gate])])  # silu
        return self.linear(g.op("Mul", [activated, up]), w.linear(linears[MLP[2]]))

    def block(self, x: str, pending: str | None, index: int, attention
              ) -> tuple[str, str]:
        """(residual stream, the MLP output still to add to it): the add is left to the
        next norm (residual_norm), which fuses the two."""
        w = self.w
        linears = w.block_linear_names(index)
        prefix = w.block_prefix(index)
        before_attention, before_mlp = w.block_norms(index)
        h, x = self.residual_norm(x, pending, before_attention,
                                  f"{prefix}.input_layernorm.weight",
                                  f"{w.block_prefix(index - 1)}.out" if index else "")
        attended = attention(h, index, linears)
        h, x = self.residual_norm(x, attended, before_mlp,
                                  f"{prefix}.post_attention_layernorm.weight",
                                  f"{prefix}.attn_residual")
        return x, self.mlp(h, linears)

    def decoder(self) -> None:
        g, w = self.g, self.w
        ids = g.op("Reshape", ["input_ids", g.const([-1])], "ids")
        if self.layout == PER_LAYER:
            attention = GqaAttention(self, ids, per_layer_names(w.n_blocks), self.cache_dtype)
        else:
            attention = StandardAttention(self, ids)
        table = w.module_name(w.layout.embeddings)
        shared = w.tied and w.embedding_packed is not None and _shareable(w.embedding_packed)
        if shared:
            x = self.shared_table(ids, table)
        elif w.embedding_packed is not None:
            x = self.packed(gather_block_quantized, w.embedding_packed, ids, table)
        else:
            embed = g.row_blocks(w.embedding_name, w.embedding_shape(), w.embedding_blocks())
            x = g.op("Gather", [embed, ids], "embeddings", axis=0)
        if self.batched:
            x = g.op("Unsqueeze", [x, g.const([0])], "hidden")  # [1, T, hidden]
        pending = None
        for index in range(w.n_blocks):
            x, pending = self.block(x, pending, index, attention)
        x, _ = self.residual_norm(x, pending, w.float32(w.norm_name), w.norm_name,
                                  f"{w.block_prefix(w.n_blocks - 1)}.out")
        head_packed = w.embedding_packed if w.tied else w.head_packed
        if shared:  # the head's tensors are in the graph already (shared_table)
            logits = g.fresh(f"{w.head_module}.out")
            for node in matmul_nbits(head_packed, x, logits, w.head_module).nodes:
                g.node(node)
        elif head_packed is not None:
            logits = self.packed(matmul_nbits, head_packed, x, w.head_module)
        elif w.tied:  # E is [vocab, hidden]: Gemm transposes it without a second copy
            if self.batched:  # Gemm takes 2-D operands only
                x = g.op("Reshape", [x, g.const([-1, w.shape.hidden])])
            logits = g.op("Gemm", [x, embed], "head", transB=1)
            if self.batched:
                logits = g.op("Unsqueeze", [logits, g.const([0])])
        else:
            logits = self.linear(x, w.linear(w.head_module))
        if self.batched:  # [1, T, vocab] already: its producer writes the output itself
            _rename_output(g.nodes, logits, STACKED_OUTPUTS[0])
        else:
            g.node(_make_node("Unsqueeze", [logits, g.const([0])], [STACKED_OUTPUTS[0]]))
        attention.finish()


def _shareable(packed) -> bool:
    """A table MatMulNBits holds as it is (no 2/3-bit widening, no input scales), so its
    rows can be read back from the head's tensors."""
    return (packed.bits in SHARED_BITS and packed.input_scale is None
            and matmul_nbits_block(packed.group_size) is not None)


def _make_node(op_type: str, inputs: list[str], outputs: list[str], **attributes):
    from onnx import helper

    return helper.make_node(op_type, inputs, outputs, name=outputs[0], **attributes)


def _rename_output(nodes: list, old: str, new: str) -> None:
    """Make the node that produces `old` (a value nothing reads yet) produce `new`."""
    for node in reversed(nodes):
        for i, output in enumerate(node.output):
            if output == old:
                node.output[i] = new
                return
    raise AssertionError(f"no node produces {old}")


def write_decoder_onnx(weights: DecoderWeights, out: Path,
                       metadata: dict[str, str] | None = None, *,
                       external: bool = True, accuracy_level: int | None = None,
                       attention: str = "auto", kv_cache_dtype: str = "float32"
                       ) -> OnnxExport:
    """Write the decoder of `weights` to `out` (graph) and, with `external`, its weights to
    `out.name + ".data"` as they are read; else every weight inside the one file (for a
    model already in memory whose file stays under protobuf's 2 GB).

    `attention`: "fused" (GroupQueryAttention, per-layer cache updated in place; see
    export.onnx.cache_io), "standard" (standard ops, stacked cache: any ONNX runtime) or
    "auto" (fused where onnxruntime's kernel takes the head width). `kv_cache_dtype`:
    "float32", "float16" or "int8" (fused only; int8 reads `weights.kv_scales`)."""
    onnx = require("onnx", "onnx", "ONNX export")
    from onnx import TensorProto, helper

    shape = weights.shape
    layout = cache_layout(shape.head_dim, attention, kv_cache_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(ExternalDataWriter(out)) if external else None
        graph = GraphBuilder(writer)
        writer_state = _DecoderWriter(weights, graph, layout, kv_cache_dtype)
        writer_state.decoder()
    set_accuracy_level(graph.nodes, accuracy_level)
    tokens = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "tokens"]),
              helper.make_tensor_value_info("position", TensorProto.INT64, [1])]
    logits = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                            [1, "tokens", shape.vocab])]
    cache_type = {"float16": TensorProto.FLOAT16, "int8": TensorProto.INT8}.get(
        kv_cache_dtype, TensorProto.FLOAT)
    if layout == STACKED:
        cache = list(shape.cache_shape())
        inputs = tokens + [helper.make_tensor_value_info(name, cache_type, cache)
                           for name in STACKED_INPUTS[2:]]
        outputs = logits + [helper.make_tensor_value_info(name, cache_type, cache)
                            for name in STACKED_OUTPUTS[1:]]
    else:
        layer_cache = [1, *shape.cache_shape()[1:]]
        described = io_description(shape, PER_LAYER, kv_cache_dtype)
        inputs = tokens + [helper.make_tensor_value_info(name, cache_type, layer_cache)
                           for name in described["inputs"][2:]]
        outputs = logits + [helper.make_tensor_value_info(name, cache_type, layer_cache)
                            for name in described["outputs"][1:]]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "decoder", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET),
                       helper.make_opsetid("com.microsoft", 1)],
        producer_name="edge-toolkit", ir_version=IR_VERSION)
    description = io_description(shape, layout, kv_cache_dtype)
    for key, value in {LLM_METADATA_KEY: json.dumps(description), **(metadata or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(out))
    return OnnxExport(out, weights, writer_state.carried, writer_state.dropped, external)


ATTENTIONS = ("auto", "fused", "standard")


def cache_layout(head_dim: int, attention: str, kv_cache_dtype: str) -> str:
    """The cache layout (export.onnx.cache_io) `attention` gives a model of this head
    width; ExportError for a combination no file can carry."""
    if attention not in ATTENTIONS:
        raise ExportError(f"--onnx-attention {attention!r} must be one of {', '.join(ATTENTIONS)}")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ExportError(f"--kv-cache {kv_cache_dtype!r} must be one of "
                          f"{', '.join(KV_CACHE_DTYPES)}")
    fits = head_dim % HEAD_DIM_MULTIPLE == 0
    if attention == "fused" and not fits:
        raise ExportError(f"--onnx-attention fused needs a head width that is a multiple of "
                          f"{HEAD_DIM_MULTIPLE} (onnxruntime's GroupQueryAttention); this "
                          f"model's is {head_dim}: use --onnx-attention standard")
    layout = PER_LAYER if attention == "fused" or (attention == "auto" and fits) else STACKED
    if kv_cache_dtype != "float32" and layout == STACKED:
        raise ExportError(f"--kv-cache {kv_cache_dtype} needs the fused attention (a head "
                          f"width that is a multiple of {HEAD_DIM_MULTIPLE}, and "
                          "--onnx-attention auto or fused); drop --kv-cache")
    return layout
