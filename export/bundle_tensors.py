"""The inputs and outputs of an exported vision file as its bundle manifest lists them,
read from the file itself (the ONNX graph, the .tflite signature table), so an app binds
tensors by the names, dtypes and shapes the file really has, not by what the exporter
meant to write. No runtime starts: only the ONNX graph (not its weights) and the
flatbuffer's tables are parsed.

Each tensor: {"name", "dtype", "shape"} where "name" is what a runtime binds it by
(onnxruntime: the graph's value name; LiteRT: the signature's key, args_0 / output_0),
plus for LiteRT the flatbuffer tensor's own "tensor" name and, for a quantized tensor,
"quantization": {"scale", "zero_point"} (real = scale * (q - zero_point)). LiteRT
outputs are listed in name order, the order export.litert.run_model returns them in,
which for litert-torch's output_0, output_1 .. is the module's return order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from export.errors import ExportError, require

SIGNATURE = "serving_default"  # the one signature litert-torch writes for a vision model
PREPROCESS_KEY = "edge_toolkit.preprocess"  # export.vision's ONNX metadata entry


def describe_io(runtime: str, path: Path) -> dict:
    """{"inputs": [...], "outputs": [...], "signature": None | str, "metadata": {...}}."""
    if runtime == "onnxruntime":
        return _onnx_io(path)
    if runtime == "ai-edge-litert":
        return _tflite_io(path)
    raise ExportError(f"bundles hold ONNX or LiteRT files, not {runtime} ones")


def _onnx_io(path: Path) -> dict:
    onnx = require("onnx", "onnx", "describing ONNX files")
    from onnx import helper

    model = onnx.load(os.fspath(path), load_external_data=False)

    def tensor(value) -> dict:
        kind = value.type.tensor_type
        return {"name": value.name,
                "dtype": helper.tensor_dtype_to_np_dtype(kind.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in kind.shape.dim]}

    initializers = {i.name for i in model.graph.initializer}
    metadata = {}
    for entry in model.metadata_props:
        if entry.key == PREPROCESS_KEY:
            metadata[entry.key] = json.loads(entry.value)
    return {"inputs": [tensor(v) for v in model.graph.input if v.name not in initializers],
            "outputs": [tensor(v) for v in model.graph.output],
            "signature": None, "metadata": metadata}


def _tflite_io(path: Path) -> dict:
    require("ai_edge_litert", "litert", "describing LiteRT files")
    from ai_edge_litert import schema_py_generated as schema

    type_names = {value: name.lower() for name, value in vars(schema.TensorType).items()
                  if not name.startswith("_")}
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    keys = [model.SignatureDefs(i).SignatureKey().decode()
            for i in range(model.SignatureDefsLength())]
    if keys != [SIGNATURE]:
        raise ExportError(f"{path.name} has signatures {keys}, not the one {SIGNATURE!r} "
                          "a vision export writes: export it again with this version of "
                          "Edge Toolkit")
    sig = model.SignatureDefs(0)
    subgraph = model.Subgraphs(sig.SubgraphIndex())

    def tensor(item) -> dict:
        t = subgraph.Tensors(item.TensorIndex())
        described = {"name": item.Name().decode(), "tensor": t.Name().decode(),
                     "dtype": type_names.get(t.Type(), str(t.Type())),
                     "shape": [int(d) for d in t.ShapeAsNumpy()]}
        quant = t.Quantization()
        if quant is not None and quant.ScaleLength():
            described["quantization"] = {"scale": float(quant.Scale(0)),
                                         "zero_point": int(quant.ZeroPoint(0))}
        return described

    outputs = sorted((sig.Outputs(j) for j in range(sig.OutputsLength())),
                     key=lambda item: item.Name())
    return {"inputs": [tensor(sig.Inputs(j)) for j in range(sig.InputsLength())],
            "outputs": [tensor(item) for item in outputs],
            "signature": SIGNATURE, "metadata": {}}
