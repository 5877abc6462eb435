"""The embedding lookup over a quantized table: gather the rows' integer codes and their
group scales and zero points, and dequantize only those rows.

litert-torch writes `embed[ids]` as GATHER_ND(table [V, H] float32, ids [T, 1]). With the
table quantized per row in groups of g inputs (G = H / g groups),

    rows[t, j] = scale[ids[t], j // g] * (code[ids[t], j] - zero[ids[t], j // g])

becomes, over the codes buffer the head's DEQUANTIZE reads too (no second copy):

    GATHER(codes [V, G, g] int4/int8, ids [T, 1], axis 0) -> [T, 1, G, g] -> CAST float32
    GATHER(zeros [V, G, 1] float32, ids)                  -> [T, 1, G, 1]   SUB (broadcast)
    GATHER(scales [V, G, 1] float32, ids)                 -> [T, 1, G, 1]   MUL (broadcast)
    RESHAPE -> [T, H], the tensor GATHER_ND produced

(code - zero) is a small integer, exact in float32, and one product follows, so each value
is the same float32 as DEQUANTIZE's scale * (q - zero_point) and as the reference's
dequantized table. The table is never float in memory: an untied model's runtime holds
its codes and 8 bytes per group. Checked with ai-edge-litert 2.3: GATHER and CAST take
INT4 and INT8; GATHER_ND refuses INT4 ("Params of type 'INT4' are not supported by
gather_nd"), hence GATHER on the ids' last axis.
"""

from __future__ import annotations

import numpy as np


def rewrite_gathers(rewriter, subgraph, weight_index: int, codes_buffer: int,
                    view: tuple[np.ndarray, np.ndarray, np.ndarray], container: int,
                    label: bytes, shared: dict[str, int]) -> int:
    """Replace each GATHER_ND that reads the float table `weight_index` with the ops
    above; returns how many were replaced. `view`: (codes, scales, zero points) as
    export.litert.weights.quantized_view gives them (rows of the [V * G, g] view).
    `shared`: the scale and zero buffers by name, kept by the caller across signatures
    (each signature has its own tensors, all over one copy of the data)."""
    schema = rewriter.schema
    gather_nd = rewriter.find_opcode(schema.BuiltinOperator.GATHER_ND)
    if gather_nd is None:
        return 0
    codes, scales, zeros = view
    vocab, width = (int(d) for d in subgraph.tensors[weight_index].shape)
    group = codes.shape[1]
    groups = width // group
    tables = None
    replaced = 0
    position = 0
    while position < len(subgraph.operators):
        op = subgraph.operators[position]
        ids = int(op.inputs[1]) if len(op.inputs) > 1 else -1
        if (op.opcodeIndex != gather_nd or int(op.inputs[0]) != weight_index
                or int(subgraph.tensors[ids].shape[-1]) != 1):
            position += 1
            continue
        if tables is None:  # one set of tensors per signature, over shared buffers
            if not shared:
                shared.update(scales=_float_buffer(rewriter, scales),
                              zeros=_float_buffer(rewriter, zeros))
            tables = _table_tensors(rewriter, subgraph, label, codes_buffer, shared,
                                    (vocab, groups, group), container)
        lead = [int(d) for d in subgraph.tensors[ids].shape]  # [..., 1]
        new_ops = _row_ops(rewriter, subgraph, tables, ids, int(op.outputs[0]), lead,
                           (groups, group), label)
        subgraph.operators[position:position + 1] = new_ops
        position += len(new_ops)
        replaced += 1
    return replaced


def _float_buffer(rewriter, values: np.ndarray) -> int:
    return rewriter.add_buffer(np.ascontiguousarray(values, np.float32).view(np.uint8))


def _table_tensors(rewriter, subgraph, label: bytes, codes_buffer: int,
                   shared: dict[str, int], shape: tuple[int, int, int],
                   container: int) -> tuple[int, int, int]:
    schema = rewriter.schema
    vocab, groups, group = shape
    dtype = schema.TensorType.INT4 if container == 4 else schema.TensorType.INT8
    codes = rewriter.add_tensor(subgraph, label + b"/row_codes", [vocab, groups, group], dtype,
                                codes_buffer)
    side = [vocab, groups, 1]
    scale = rewriter.add_tensor(subgraph, label + b"/row_scales", side,
                                schema.TensorType.FLOAT32, shared["scales"])
    zero = rewriter.add_tensor(subgraph, label + b"/row_zeros", side, schema.TensorType.FLOAT32,
                               shared["zeros"])
    return codes, scale, zero


def _row_ops(rewriter, subgraph, tables: tuple[int, int, int], ids: int, output: int,
             lead: list[int], grouping: tuple[int, int], label: bytes) -> list:
    schema = rewriter.schema
    codes, scale, zero = tables
    groups, group = grouping
    rows = lead + [groups, group]
    side = lead + [groups, 1]
    dtype = subgraph.tensors[codes].type
    name = label + b"/rows"

    def tensor(suffix: bytes, shape: list[int], kind=schema.TensorType.FLOAT32) -> int:
        return rewriter.add_tensor(subgraph, name + suffix, shape, kind, 0)

    def gather(table: int, shape: list[int], kind=schema.TensorType.FLOAT32):
        options = schema.GatherOptionsT()
        options.axis, options.batchDims = 0, 0
        out = tensor(b"/gathered", shape, kind)
        return out, rewriter.make_op(schema.BuiltinOperator.GATHER, [table, ids], [out],
                                     schema.BuiltinOptions.GatherOptions, options)

    picked, op_codes = gather(codes, rows, dtype)
    as_float = tensor(b"/float", rows)
    cast = rewriter.make_op(schema.BuiltinOperator.CAST, [picked], [as_float])
    row_zero, op_zero = gather(zero, side)
    shifted = tensor(b"/shifted", rows)
    sub = rewriter.make_op(schema.BuiltinOperator.SUB, [as_float, row_zero], [shifted],
                           schema.BuiltinOptions.SubOptions, schema.SubOptionsT())
    row_scale, op_scale = gather(scale, side)
    scaled = tensor(b"/scaled", rows)
    mul = rewriter.make_op(schema.BuiltinOperator.MUL, [shifted, row_scale], [scaled],
                           schema.BuiltinOptions.MulOptions, schema.MulOptionsT())
    target = [int(d) for d in subgraph.tensors[output].shape]
    shape = rewriter.add_tensor(subgraph, name + b"/shape", [len(target)],
                                schema.TensorType.INT32,
                                rewriter.add_buffer(np.array(target, np.int32).view(np.uint8)))
    options = schema.ReshapeOptionsT()
    options.newShape = target
    reshape = rewriter.make_op(schema.BuiltinOperator.RESHAPE, [scaled, shape], [output],
                               schema.BuiltinOptions.ReshapeOptions, options)
    return [op_codes, cast, op_zero, sub, op_scale, mul, reshape]
