"""The inputs, outputs and states of a saved Core ML package as a bundle manifest lists
them, read from the package's own spec (Data/com.apple.CoreML/model.mlmodel) with
coremltools, without loading or running it (Core ML runs only on macOS), so an app binds
features by the names, types and shapes the package really has, not by what the exporter
meant to write.

Each feature: {"name", "dtype", "shape"}: dtype "float32", "float16", "float64" or
"int32" (a MultiArray's data type); a flexible dimension (an LLM's token count, 1..C) is
written "tokens" in "shape", with its bounds in "shape_range" [[lo, hi] per dimension].
States (ct.StateType, iOS 18) are listed the same way: the fp16 key/value cache an LLM
package updates in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from export.errors import ExportError, require

TOKENS = "tokens"  # a flexible dimension: the token count of an LLM call
ML_PROGRAM_SPEC = "Data/com.apple.CoreML/model.mlmodel"


def describe_package(path: Path) -> dict:
    """{"inputs", "outputs", "states": [feature], "spec_version", "metadata"}."""
    ct = require("coremltools", "coreml", "describing Core ML packages")
    if not (Path(path) / ML_PROGRAM_SPEC).is_file():
        raise ExportError(f"{path} holds no {ML_PROGRAM_SPEC}: it is not a Core ML ML program "
                          "package; export it again")
    spec = ct.models.MLModel(os.fspath(path), skip_model_load=True).get_spec()
    description = spec.description
    return {"inputs": [_feature(f, path) for f in description.input],
            "outputs": [_feature(f, path) for f in description.output],
            "states": [_feature(f, path) for f in description.state],
            "spec_version": int(spec.specificationVersion),
            "metadata": dict(description.metadata.userDefined)}


def _feature(feature, path: Path) -> dict:
    kind = feature.type.WhichOneof("Type")
    if kind == "stateType":
        array = feature.type.stateType.arrayType
    elif kind == "multiArrayType":
        array = feature.type.multiArrayType
    else:
        raise ExportError(f"{Path(path).name}'s feature {feature.name} is a {kind}, not a "
                          "MultiArray: bundles hold packages with tensor inputs and outputs "
                          "(export it again with this version of Edge Toolkit)")
    described = {"name": feature.name, "dtype": _dtype(array)}
    if array.HasField("shapeRange"):
        ranges = [[int(r.lowerBound), int(r.upperBound)] for r in array.shapeRange.sizeRanges]
        described["shape"] = [lo if lo == hi else TOKENS for lo, hi in ranges]
        described["shape_range"] = ranges
    else:
        described["shape"] = [int(d) for d in array.shape]
    return described


def _dtype(array) -> str:
    """FLOAT32 -> "float32" (the spec's ArrayDataType enum name, lower case)."""
    return type(array).ArrayDataType.Name(array.dataType).lower()
