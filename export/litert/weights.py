"""Put the artifact's integer weights into a written .tflite file as LiteRT weight-only
quantization: an int8/int4 constant, a DEQUANTIZE op, the float weight it stands for.

    affine      W[r, j] = scale[r, k] * (code[r, j] - zero[r, k]),  k = j // group
    per channel (group = in):   q int{8,4} [out, in], scale/zero per row (quantized dim 0)
                                -> DEQUANTIZE -> W [out, in] -> FULLY_CONNECTED
    grouped:    q int{8,4} [out * groups, group], one scale/zero per row of that view
                                -> DEQUANTIZE -> RESHAPE [out, in] -> FULLY_CONNECTED
    AWQ (arXiv 2306.00978) W = dequant(codes) / s
                                -> the FULLY_CONNECTED input is divided by s first (DIV)

TFLite's DEQUANTIZE computes scale * (q - zero_point) in float32, the toolkit's own
formula, so the weight the file computes with equals the one the toolkit evaluated. The
runtime dequantizes a constant once, when the model is prepared: the file is small, the
arithmetic is float (exact), the resident weights are float. 2- and 3-bit codes sit in
int4, 6-bit codes in int8. TFLite keeps a float32 scale and an int64 zero point per group
(12 bytes) in the codes tensor's quantization parameters, and each signature has its own
tensor: with two signatures, int4 in 64-weight groups costs 7 bits per weight in the file
(4.31 in the artifact); per-channel codes cost their bit width. Palette (lookup-table)
weights have no LiteRT op: the caller maps them to affine codes first
(export.litert.palette_map), and anything still not affine is listed as dropped, float32.

A table read by a lookup (GATHER_ND, the embedding) is not dequantized whole: the lookup
gathers its rows' codes and scales (export.litert.gather); a tied head's matmul still
gets the DEQUANTIZE, over the same codes buffer.

Layers are found by content: the float32 bytes of each compressed layer's weight are
looked up among the file's constant buffers, so nothing depends on the converter's
tensor names. litert-torch shares a weight buffer between the prefill and decode
signatures; each signature gets its own DEQUANTIZE over one shared int buffer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from export.errors import ExportError
from export.litert.gather import rewrite_gathers
from export.records import LayerRecord
from models.qformat import AffineQuantized

# LiteRT's weight-only DEQUANTIZE reads int4 or int8 constants: narrower codes widen.
CONTAINER_BITS = {2: 4, 3: 4, 4: 4, 6: 8, 8: 8}


def digest(weight: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(weight, dtype=np.float32).tobytes()).hexdigest()


@dataclasses.dataclass
class Carry:
    """One weight to carry: its float32 values as exported [out, in] (found by content),
    the packed form the file gets, a note for the report ("quantized at export", "palette
    mapped, ..."), and for an embedding table the name of a head tied to it."""

    weight: np.ndarray
    packed: object
    note: str = ""
    tied_head: str | None = None


@dataclasses.dataclass
class _Layer:
    name: str
    carry: Carry
    codes_buffer: int = -1  # index of the shared int buffer, once written
    gathers: int = 0  # GATHER_ND lookups rewritten to read the codes (export.litert.gather)
    dequantized: bool = False  # a DEQUANTIZE feeds some other op (a matmul)
    lookup_buffers: dict = dataclasses.field(default_factory=dict)  # the lookup's scales

    @property
    def packed(self) -> AffineQuantized:
        return self.carry.packed


def carry_weights(path: Path, layers: dict[str, tuple[np.ndarray, object] | Carry]
                  ) -> tuple[list[LayerRecord], list[LayerRecord]]:
    """Rewrite the .tflite at `path` in place. `layers` maps a layer name to (its float32
    weight [out, in] as exported, its packed form), or to a Carry. Returns (carried,
    dropped)."""
    from ai_edge_litert import schema_py_generated as schema

    carried, dropped, wanted = [], [], {}
    for name, entry in layers.items():
        carry = entry if isinstance(entry, Carry) else Carry(*entry)
        if isinstance(carry.packed, AffineQuantized):
            wanted[digest(carry.weight)] = _Layer(name, carry)
        else:
            dropped.append(LayerRecord(name, f"float32: LiteRT has no op for "
                                             f"{carry.packed.scheme} weights"))
    if not wanted:
        return carried, dropped
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    if any(getattr(b, "offset", 0) > 1 for b in model.buffers):
        raise ExportError("the .tflite keeps its weights outside the flatbuffer (over 2 GB); "
                          "carrying compression into such files is not supported")
    by_buffer = {}
    for index, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data) >= 64:
            layer = wanted.get(hashlib.sha256(np.asarray(buffer.data).tobytes()).hexdigest())
            if layer is not None:
                by_buffer[index] = layer
    found = {layer.name for layer in by_buffer.values()}
    missing = sorted(layer.name for layer in wanted.values() if layer.name not in found)
    if missing:
        raise ExportError(f"compressed weights not found in the LiteRT file: {missing[:3]}")
    rewriter = _Rewriter(model, schema)
    for subgraph in model.subgraphs:
        for tensor_index, tensor in enumerate(subgraph.tensors):
            layer = by_buffer.get(tensor.buffer)
            if layer is not None:
                rewriter.dequantize_weight(subgraph, tensor_index, layer)
    for index, layer in by_buffer.items():
        model.buffers[index].data = None  # the float copy is gone from the file
        carried.extend(_records(layer))
    builder_bytes = rewriter.pack()
    path.write_bytes(builder_bytes)
    return carried, dropped


def _records(layer: _Layer) -> list[LayerRecord]:
    """One record per use: the matmul's DEQUANTIZE, and a table's row lookup (a tied head
    is the table's DEQUANTIZE, named after the head)."""
    note = f" ({layer.carry.note})" if layer.carry.note else ""
    records = []
    if layer.gathers:
        packed = layer.packed
        records.append(LayerRecord(layer.name, f"GATHER int{CONTAINER_BITS[packed.bits]} "
                                               f"rows, block {packed.group_size}{note}"))
    if layer.dequantized or not layer.gathers:
        name = layer.carry.tied_head if layer.gathers and layer.carry.tied_head else layer.name
        records.append(LayerRecord(name, _how(layer.packed) + note))
    return records


def _how(packed: AffineQuantized) -> str:
    container = CONTAINER_BITS[packed.bits]
    grouping = ("per channel" if packed.group_size == packed.shape[1]
                else f"block {packed.group_size}")
    how = f"DEQUANTIZE int{container} {grouping}"
    if container != packed.bits:
        how += f" ({packed.bits}-bit codes)"
    if packed.input_scale is not None:
        how += " + DIV by AWQ scales"
    return how


def quantized_view(packed: AffineQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signed codes [out * groups, group], scales [out * groups] float32, zero points
    [out * groups] int64): one row per (output row, input group), codes shifted from the
    artifact's unsigned range to the container's signed one."""
    out, inp = packed.shape
    groups = inp // packed.group_size
    shift = 1 << (CONTAINER_BITS[packed.bits] - 1)
    codes = packed.codes.numpy().astype(np.int16) - shift
    zeros = packed.zero_points().numpy().astype(np.int64) - shift
    return (codes.reshape(out * groups, packed.group_size).astype(np.int8),
            packed.scales.numpy().astype(np.float32).reshape(-1), zeros.reshape(-1))


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Two signed 4-bit values per byte, the first in the low nibble (TFLite's layout)."""
    flat = (values.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return flat[0::2] | (flat[1::2] << 4)


class _Rewriter:
    def __init__(self, model, schema):
        self.model, self.schema = model, schema
        if model.buffers[0].data is not None:
            raise ExportError("the .tflite has no empty buffer 0; cannot add computed tensors")

    def pack(self) -> bytes:
        import flatbuffers

        builder = flatbuffers.Builder(1 << 20)
        builder.Finish(self.model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def dequantize_weight(self, subgraph, weight_index: int, layer: _Layer) -> None:
        schema, packed = self.schema, layer.packed
        out, inp = packed.shape
        codes, scales, zeros = quantized_view(packed)
        container = CONTAINER_BITS[packed.bits]
        if layer.codes_buffer < 0:
            data = pack_int4(codes) if container == 4 else codes.view(np.uint8).reshape(-1)
            layer.codes_buffer = self.add_buffer(data)
        weight = subgraph.tensors[weight_index]
        weight.buffer = 0  # now computed from the codes by the ops below
        # Short, readable names (the converter's own are long scope paths).
        label = layer.name.encode()
        layer.gathers += rewrite_gathers(self, subgraph, weight_index, layer.codes_buffer,
                                         (codes, scales, zeros), container, label,
                                         layer.lookup_buffers)
        consumers = [i for i, op in enumerate(subgraph.operators) if weight_index in op.inputs]
        if not consumers:  # every use reads the codes now
            return
        layer.dequantized = True
        quant = schema.QuantizationParametersT()
        quant.scale, quant.zeroPoint = scales.tolist(), zeros.tolist()
        quant.quantizedDimension = 0
        codes_tensor = self.add_tensor(subgraph, label + b"/codes", list(codes.shape),
                                       schema.TensorType.INT4 if container == 4
                                       else schema.TensorType.INT8, layer.codes_buffer, quant)
        new_ops = []
        if codes.shape[0] == out:  # per channel: dequantize straight into the weight
            new_ops.append(self.make_op(schema.BuiltinOperator.DEQUANTIZE, [codes_tensor],
                                        [weight_index]))
        else:
            flat = self.add_tensor(subgraph, label + b"/grouped", list(codes.shape),
                                   schema.TensorType.FLOAT32, 0)
            shape = self.add_tensor(subgraph, label + b"/shape", [2], schema.TensorType.INT32,
                                    self.add_buffer(np.array([out, inp], np.int32)
                                                    .view(np.uint8)))
            new_ops.append(self.make_op(schema.BuiltinOperator.DEQUANTIZE, [codes_tensor],
                                        [flat]))
            options = schema.ReshapeOptionsT()
            options.newShape = [out, inp]
            new_ops.append(self.make_op(schema.BuiltinOperator.RESHAPE, [flat, shape],
                                        [weight_index], schema.BuiltinOptions.ReshapeOptions,
                                        options))
        first = consumers[0]
        subgraph.operators[first:first] = new_ops
        if packed.input_scale is not None:
            self._divide_inputs(subgraph, weight_index, packed, layer.name)

    def _divide_inputs(self, subgraph, weight_index: int, packed: AffineQuantized,
                       name: str) -> None:
        """x -> x / s before every op that multiplies by this weight (AWQ's W / s)."""
        schema = self.schema
        scale = packed.input_scale.numpy().astype(np.float32)
        scale_tensor = self.add_tensor(subgraph, name.encode() + b"/awq_scale", [scale.size],
                                    schema.TensorType.FLOAT32,
                                    self.add_buffer(scale.view(np.uint8)))
        position = 0
        while position < len(subgraph.operators):
            op = subgraph.operators[position]
            if len(op.inputs) > 1 and op.inputs[1] == weight_index and op.inputs[0] >= 0:
                source = subgraph.tensors[op.inputs[0]]
                scaled = self.add_tensor(subgraph, name.encode() + b"/awq_input",
                                      list(source.shape), schema.TensorType.FLOAT32, 0)
                options = schema.DivOptionsT()
                divide = self.make_op(schema.BuiltinOperator.DIV, [op.inputs[0], scale_tensor],
                                  [scaled], schema.BuiltinOptions.DivOptions, options)
                op.inputs = [scaled, *list(op.inputs)[1:]]  # unpacked arrays are read-only
                subgraph.operators.insert(position, divide)
                position += 1
            position += 1

    def add_buffer(self, data: np.ndarray) -> int:
        buffer = self.schema.BufferT()
        buffer.data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        self.model.buffers.append(buffer)
        return len(self.model.buffers) - 1

    def add_tensor(self, subgraph, name: bytes, shape: list[int], dtype: int, buffer: int,
                quantization=None) -> int:
        tensor = self.schema.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name, shape, dtype, buffer
        tensor.quantization = quantization
        subgraph.tensors.append(tensor)
        return len(subgraph.tensors) - 1

    def make_op(self, code: int, inputs: list[int], outputs: list[int], options_type: int = 0,
            options=None):
        op = self.schema.OperatorT()
        op.opcodeIndex = self.opcode_index(code)
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        return op

    def find_opcode(self, code: int) -> int | None:
        """The index of builtin `code` among the file's operator codes, None if absent."""
        for index, existing in enumerate(self.model.operatorCodes):
            if existing.builtinCode == code and not existing.customCode:
                return index
        return None

    def opcode_index(self, code: int) -> int:
        for index, existing in enumerate(self.model.operatorCodes):
            if existing.builtinCode == code and not existing.customCode:
                return index
        entry = self.schema.OperatorCodeT()
        entry.builtinCode = code
        # Builtin codes under 127 are mirrored in the deprecated 8-bit field.
        entry.deprecatedBuiltinCode = min(code, 127)
        entry.version = 1
        self.model.operatorCodes.append(entry)
        return len(self.model.operatorCodes) - 1
