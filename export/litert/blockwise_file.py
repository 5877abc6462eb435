"""Put int4 blockwise codes into a written .tflite: each FULLY_CONNECTED weight that holds a
BlockwiseLinear's s'(c - h) in float32 (found by content, as export.litert.weights finds
its layers) is retyped in place to the form ai-edge-quantizer writes for dynamic int4
blockwise quantization:

    weight tensor   INT4 [out, in], buffer = the codes, two per byte (low nibble first)
    quantization    BlockwiseQuantization(scales = a FLOAT16 [out, in / block] tensor,
                    zeroPoints = -1, blockSize = block), quantizedDimension 0

so the FC reads the codes directly (no DEQUANTIZE op, no float weight at run time). Each
signature's tensor gets its own scales tensor over one shared scales buffer.

A converted chunk of over about 1 GB comes from litert-torch with its constants after
the flatbuffer (each buffer an offset and size into the file, data empty); they are read
back into the flatbuffer first, which the much smaller int4 file then holds whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from export.errors import ExportError
from export.litert.blockwise import BlockwiseWeight
from export.litert.weights import _Rewriter, digest, pack_int4
from export.records import LayerRecord

FLATBUFFER_LIMIT = 2 << 30  # a .tflite without external buffers cannot exceed 2 GiB


def carry_blockwise(path: Path, mapped: dict[str, list[BlockwiseWeight]]) -> list[LayerRecord]:
    """Rewrite the .tflite at `path` in place; `mapped`: layer -> its FCs' weights (one
    per input slice, export.litert.blockwise.BlockwiseLinear); one record per layer."""
    from ai_edge_litert import schema_py_generated as schema

    if not mapped:
        return []
    wanted = {digest(part.main_weight().numpy()): (name, part)
              for name, parts in mapped.items() for part in parts}
    raw = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(raw, 0))
    inline_buffers(model, raw)
    by_buffer = {}
    for index, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data) >= 64:
            found = wanted.get(hashlib.sha256(np.asarray(buffer.data).tobytes()).hexdigest())
            if found is not None:
                by_buffer[index] = found
    found = {(name, id(part)) for name, part in by_buffer.values()}
    missing = sorted({name for name, parts in mapped.items() for part in parts
                      if (name, id(part)) not in found})
    if missing:
        raise ExportError(f"int4 blockwise weights not found in the LiteRT file: {missing[:3]}")
    rewriter = _Rewriter(model, schema)
    scales_buffers = {}
    for index, (_, weight) in by_buffer.items():
        model.buffers[index].data = pack_int4(weight.codes.numpy())
        scales_buffers[index] = rewriter.add_buffer(
            weight.scales.numpy().astype(np.float16).view(np.uint8).reshape(-1))
    for subgraph in model.subgraphs:
        for tensor in list(subgraph.tensors):
            found = by_buffer.get(tensor.buffer)
            if found is None:
                continue
            name, weight = found
            groups = weight.scales.shape[1]
            scales = rewriter.add_tensor(subgraph, name.encode() + b"/scales",
                                         [weight.codes.shape[0], groups],
                                         schema.TensorType.FLOAT16,
                                         scales_buffers[tensor.buffer])
            details = schema.BlockwiseQuantizationT()
            details.scales, details.zeroPoints = scales, -1
            details.blockSize = weight.group_size
            quant = schema.QuantizationParametersT()
            quant.detailsType = schema.QuantizationDetails.BlockwiseQuantization
            quant.details, quant.quantizedDimension = details, 0
            tensor.type, tensor.quantization = schema.TensorType.INT4, quant
    data = rewriter.pack()
    if len(data) >= FLATBUFFER_LIMIT:
        raise ExportError(f"{path.name} would be {len(data) / 1e9:.2f} GB, over the 2 GB "
                          "flatbuffer limit: pass a larger --chunks")
    del raw, model
    path.write_bytes(data)
    return [LayerRecord(name, f"FULLY_CONNECTED int4 blockwise {parts[0].group_size}, "
                              "dynamic int8 input")
            for name, parts in mapped.items()]


def inline_buffers(model, raw: bytes) -> None:
    """Buffers stored after the flatbuffer (offset, size into the file) read into it."""
    for buffer in model.buffers:
        if getattr(buffer, "offset", 0) > 1:
            buffer.data = np.frombuffer(raw, np.uint8, buffer.size, buffer.offset)
            buffer.offset = buffer.size = 0
