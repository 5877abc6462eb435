"""`export_llm_coreml`: an LLM as an iOS 18 Core ML ML program with a stateful KV cache.

    inputs:  input_ids [1, T] int32 (T in 1..max_context), position [1] int32
    states:  keys, values [layers, kv_heads, max_context, head_dim] fp16 (ct.StateType)
    output:  logits [1, T, vocab]

One function serves prefill (T = prompt length) and decode (T = 1). The cache is written
with one-hot products instead of scatter (export.llm.decoder.blend_write): Core ML's
scatter needs index and data of the same shape. The converter goes through
torch.export(...).run_decompositions({}) (with numpy >= 2.4 the torch.jit.trace route
fails on any model that reads x.shape, and coremltools refuses an un-decomposed
program); coremltools'
`canonicalize_inplace_pattern` pass, which only reorders state writes, fails on this graph
and is skipped. Packed weights are put in as compile-time ops (export.coreml.weights),
matched to the converted graph's constants by value, since conversion renames them.

With `table_quantizer` (--embedding-bits) the embedding table, and an untied float head,
are quantized here and carried the same way, as constexpr_blockwise_shift_scale: the
decoder computes with the dequantized values, so the converted constant is found by value
like any linear. A tied head reads the table's one constant (gather and linear share it),
so the table is stored once. Models too large for one conversion go through
export.coreml.chunked, which reuses the pieces below for each chunk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from export.coreml.weights import carried_op
from export.errors import ExportError, require
from export.llm.export_decoder import ExportDecoder
from export.quiet import captured_console
from export.records import LayerRecord


class StatefulDecoder(torch.nn.Module):
    """The decoder with its cache as fp16 buffers updated in place (Core ML states)."""

    def __init__(self, decoder: ExportDecoder):
        super().__init__()
        self.decoder = decoder
        keys, values = decoder.empty_cache()
        self.register_buffer("keys", keys.half())
        self.register_buffer("values", values.half())

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        logits, keys, values = self.decoder(input_ids, position, self.keys.float(),
                                            self.values.float())
        self.keys.copy_(keys.half())
        self.values.copy_(values.half())
        return logits


@dataclasses.dataclass
class CoremlExport:
    path: Path
    decoder: ExportDecoder
    carried: list[LayerRecord]
    dropped: list[LayerRecord]
    # AWQ layers: the file's weight is W * s, the input is scaled by 1/s (for the checks)
    input_scales: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # tables quantized at export: record name -> models.qformat.AffineQuantized
    tables: dict = dataclasses.field(default_factory=dict)


def export_llm_coreml(source: torch.nn.Module, out: Path, *, max_context: int,
                      quantized: dict | None = None,
                      table_quantizer: Callable | None = None) -> CoremlExport:
    """`table_quantizer`: weight [rows, width] -> AffineQuantized, for the embedding table
    and an untied float head (--embedding-bits); None keeps them fp16."""
    ct = require("coremltools", "coreml", "Core ML export")
    decoder = ExportDecoder.from_hf(source, max_context, cache_write="blend")
    tables = (_quantize_tables(source, decoder, quantized or {}, table_quantizer)
              if table_quantizer is not None else {})
    stateful = StatefulDecoder(decoder).eval()
    with torch.no_grad(), warnings.catch_warnings(), captured_console():
        warnings.simplefilter("ignore")
        program = _to_mil(ct, stateful, max_context)
        carried, dropped = _carry_weights(program, decoder, quantized or {}, tables)
        model = ct.convert(program, convert_to="mlprogram",
                           minimum_deployment_target=ct.target.iOS18,
                           compute_precision=ct.precision.FLOAT16,
                           pass_pipeline=_pipeline(ct))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return CoremlExport(out, decoder, carried, dropped, input_scales(quantized), tables)


def input_scales(quantized: dict | None) -> dict[str, np.ndarray]:
    return {name: packed.input_scale.numpy().astype(np.float16)
            for name, packed in (quantized or {}).items()
            if getattr(packed, "input_scale", None) is not None}


def _quantize_tables(source: torch.nn.Module, decoder: ExportDecoder, quantized: dict,
                     quantizer: Callable) -> dict:
    """Quantize the decoder's table (and untied float head) in place: its parameters then
    hold the dequantized values the file's ops decompress to. Record name -> packed."""
    from models.adapter import decoder_layout

    if any(layer.mlp.__class__.__name__ == "MoeMLP" for layer in decoder.layers):
        raise ExportError("--embedding-bits is not carried for mixture-of-experts models "
                          "yet: export without it")
    layout = decoder_layout(source)
    names = {id(m): n for n, m in source.named_modules()}
    table = quantizer(decoder.embed.detach().float())
    decoder.embed.data = table.dequantize().to(decoder.embed.dtype)
    tables = {names[id(layout.embeddings)]: table}
    head_name = names[id(layout.head)]
    if decoder.lm_head is not None and head_name not in quantized:
        head = quantizer(decoder.lm_head.weight_t.detach().t().float())
        decoder.lm_head.weight_t.data = head.dequantize().t().contiguous()
        tables[head_name] = head
    return tables


def _pipeline(ct):
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::canonicalize_inplace_pattern"])
    return pipeline


def _to_mil(ct, stateful: StatefulDecoder, max_context: int):
    return stateful_to_mil(ct, stateful, max_context, tuple(stateful.keys.shape))


def stateful_to_mil(ct, module: torch.nn.Module, max_context: int, cache_shape: tuple,
                    hidden: int | None = None, output: str = "logits"):
    """`module`(input_ids [1, T], position [1]) -> `output`, or with `hidden`,
    module(hidden [1, T, hidden] fp16, position [1]) (a later chunk), with fp16 states
    `keys`, `values` of `cache_shape`; T in 1..max_context. The program in MIL, before
    the weights are carried and it is serialised."""
    tokens = torch.export.Dim("tokens", min=1, max=max_context)
    length = ct.RangeDim(1, max_context)
    example_tokens = min(4, max_context)
    if hidden is None:
        first = ("input_ids", torch.zeros(1, example_tokens, dtype=torch.long))
        spec = ct.TensorType(name="input_ids", dtype=np.int32, shape=ct.Shape((1, length)))
    else:
        first = ("hidden", torch.zeros(1, example_tokens, hidden))
        spec = ct.TensorType(name="hidden", dtype=np.float16,
                             shape=ct.Shape((1, length, hidden)))
    # fp16 between chunks (what the device computes in anyway); logits as the one-file model
    out = (ct.TensorType(name=output) if output == "logits"
           else ct.TensorType(name=output, dtype=np.float16))
    try:
        program = torch.export.export(
            module, (first[1], torch.zeros(1, dtype=torch.long)),
            dynamic_shapes={first[0]: {1: tokens}, "position": None}).run_decompositions({})
        cache = ct.TensorType(shape=tuple(cache_shape), dtype=np.float16)
        return ct.convert(
            program, convert_to="milinternal", minimum_deployment_target=ct.target.iOS18,
            inputs=[spec, ct.TensorType(name="position", shape=(1,), dtype=np.int32)],
            states=[ct.StateType(wrapped_type=cache, name="keys"),
                    ct.StateType(wrapped_type=cache, name="values")],
            outputs=[out], compute_precision=ct.precision.FLOAT16,
            pass_pipeline=_pipeline(ct))
    except Exception as exc:
        raise ExportError(f"coremltools could not convert the decoder: "
                          f"{str(exc).splitlines()[0][:300]}") from exc


def save_mlprogram(ct, program, out: Path) -> None:
    """The MIL program (weights carried) serialised to the package `out`."""
    model = ct.convert(program, convert_to="mlprogram",
                       minimum_deployment_target=ct.target.iOS18,
                       compute_precision=ct.precision.FLOAT16, pass_pipeline=_pipeline(ct))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))


def _digest(array: np.ndarray) -> str:
    """Of the fp16 values: the converted program computes, and stores weights, in fp16."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float16).tobytes()).hexdigest()


def _divide_inputs(weight, scale: np.ndarray, scopes) -> None:
    """x -> x * (1 / s) in front of every op that multiplies by `weight` (AWQ: W = dequant
    / s). A multiply, because coremltools turns a division by a constant into one anyway;
    the reciprocal is taken in float32 and rounded once to fp16."""
    from coremltools.converters.mil import Builder as mb

    inverse = (1.0 / scale.astype(np.float32)).astype(np.float16)
    for reader in list(weight.child_ops):
        if reader.op_type not in ("linear", "matmul"):
            raise ExportError(f"AWQ scales: the weight is read by {reader.op_type}, "
                              "expected linear or matmul")
        source = reader.inputs["x"]
        with mb.set_before_op(before_op=reader), mb.scope(*scopes):
            scaled = mb.mul(x=source, y=inverse, name=f"{reader.name}_awq_input")
        reader.enclosing_block.replace_uses_of_var_after_op(
            anchor_op=scaled.op, old_var=source, new_var=scaled, end_op=reader)


def _carry_weights(program, decoder: torch.nn.Module, quantized: dict,
                   tables: dict | None = None):
    """Replace each linear's float constant (found by its value) with a compile-time op;
    `tables` (record name -> AffineQuantized quantized at export) likewise, found by their
    dequantized values. `decoder`: source_names (export name -> source name) and the
    parameters `<export name>.weight_t`."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.scope import ScopeInfo, ScopeSource

    layers = {}
    for export_name, source_name in decoder.source_names.items():
        weight = decoder.get_parameter(f"{export_name}.weight_t").detach().t().numpy()
        layers[(weight.shape, _digest(weight))] = (source_name, weight)
    for name, packed in (tables or {}).items():
        weight = packed.dequantize().numpy()
        layers[(weight.shape, _digest(weight))] = (name, weight)
    quantized = {**quantized, **(tables or {})}
    main = program.functions["main"]
    carried, dropped, seen = [], [], set()
    for op in list(main.operations):
        value = op.outputs[0].val if op.op_type == "const" else None
        if not isinstance(value, np.ndarray) or value.ndim != 2:
            continue
        match = layers.get((value.shape, _digest(value)))
        if match is None or match[0] in seen:
            continue
        name, dense = match
        seen.add(name)
        # New ops take the scopes of the layer that reads the weight: coremltools requires
        # torch.export's stack trace and debug handle on every op.
        reader = op.outputs[0].child_ops[0]
        scopes = [ScopeInfo(source=source, data=data) for source, data in reader.scopes.items()
                  if source in (ScopeSource.EXIR_STACK_TRACE, ScopeSource.EXIR_DEBUG_HANDLE)]
        with main:
            with mb.set_before_op(before_op=op), mb.scope(*scopes):
                new, how = carried_op(quantized.get(name), dense, f"{op.name}_compressed")
                if name in (tables or {}):
                    how += " (quantized at export)"
            if new is None:
                if how:
                    dropped.append(LayerRecord(name, how))
                continue
            op.enclosing_block.replace_uses_of_var_after_op(
                anchor_op=op, old_var=op.outputs[0], new_var=new)
            op.enclosing_block.remove_ops([op])
            packed = quantized.get(name)
            if getattr(packed, "input_scale", None) is not None:
                _divide_inputs(new, packed.input_scale.numpy().astype(np.float16), scopes)
        carried.append(LayerRecord(name, how))
    missing = sorted(set(quantized) - seen)
    if missing:
        raise ExportError(f"Core ML conversion changed the weights of {missing[0]} (and "
                          f"{len(missing) - 1} more), so their packed form cannot be matched")
    return carried, dropped
