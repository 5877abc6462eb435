"""Open a saved .mlpackage without loading it (Core ML runs only on macOS) and list what a
check needs: input, output and state names with shapes, and the count of each op type."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def _shape(feature) -> list:
    kind = feature.type.WhichOneof("Type")
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        if array.HasField("shapeRange"):
            return [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
        return list(array.shape)
    if kind == "stateType":
        return list(feature.type.stateType.arrayType.shape)
    return []


def describe_mlpackage(path: Path) -> dict:
    import coremltools as ct

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    ops: Counter = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            ops.update(op.type for op in block.operations)
    description = spec.description
    return {"inputs": {f.name: _shape(f) for f in description.input},
            "outputs": {f.name: _shape(f) for f in description.output},
            "states": {f.name: _shape(f) for f in description.state},
            "ops": dict(ops), "spec_version": spec.specificationVersion}


def decompressed_weights(path: Path) -> dict[str, np.ndarray]:  # noqa: F821
    """Every compile-time (constexpr_*) op of the saved model, decompressed with
    coremltools' own reference implementation: what the device will see, readable here."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    program = load_milproto(spec, spec.specificationVersion,
                            file_weights_dir=str(Path(path) / "Data" / "com.apple.CoreML"
                                                 / "weights"))
    weights = {}
    for function in program.functions.values():
        for op in function.operations:
            if op.op_type.startswith("constexpr_"):
                weights[op.name] = op.materialized_val_inference()
    return weights
