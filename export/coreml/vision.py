"""Core ML (iOS 18 ML program) writer for vision models: float32 or float16 compute, and
optionally k-means palettized weights.

    float16     every weight and activation in IEEE half precision (what the Neural
                Engine runs; 2x smaller weights, ~1e-3 relative error)
    palettized  W[i] = lut[idx[i]],  lut in R^(2^b) per weight tensor, idx in [0, 2^b)
                from 1-D k-means on W's values (coremltools.optimize.coreml
                `palettize_weights`, mode "kmeans"); the file stores b-bit indices and
                the table and the device decompresses at load (constexpr_lut_to_dense)

Palettization compresses a model that was not trained for it, so it costs accuracy:
6 bits is usually close to lossless on a CNN, 4 bits visibly less so. Core ML runs only
on macOS, so the written package is checked for its ops and I/O, not run, off it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from export.errors import ExportError, require

PALETTE_BITS = (2, 3, 4, 6, 8)
# Weights with at most this many elements keep float values (coremltools compresses
# those "above" the threshold): their table (2^b fp16 entries) and the index padding
# cost about what they would save. coremltools' default is 2048, which
# would leave most of a small CNN's depthwise kernels (9 * C values) uncompressed.
PALETTE_MIN_WEIGHT = 1024


@dataclasses.dataclass(frozen=True)
class CoremlVisionOptions:
    # Compute precision: float16 halves the weights and is what the Neural Engine runs;
    # float32 matches the ONNX and LiteRT float files.
    fp16: bool = False
    # Bits of the k-means palette per weight tensor; None keeps the weights as they are.
    palettize_bits: int | None = None

    def __post_init__(self):
        if self.palettize_bits is not None and self.palettize_bits not in PALETTE_BITS:
            raise ExportError(f"Core ML palettization takes {PALETTE_BITS} bits, not "
                              f"{self.palettize_bits}")

    def describe(self) -> str:
        text = "float16" if self.fp16 else "float32"
        if self.palettize_bits:
            text += f", weights palettized to {self.palettize_bits} bits (k-means per tensor)"
        return text


def write_coreml_vision(wrapped: torch.nn.Module, example: torch.Tensor, out: Path,
                        meta: dict, options: CoremlVisionOptions) -> None:
    ct = require("coremltools", "coreml", "Core ML export")
    # torch.export + run_decompositions, not torch.jit.trace: see TOOLCHAIN.md gotcha 1.
    program = torch.export.export(wrapped, (example,)).run_decompositions({})
    precision = ct.precision.FLOAT16 if options.fp16 else ct.precision.FLOAT32
    model = ct.convert(program, minimum_deployment_target=ct.target.iOS18,
                       compute_precision=precision,
                       inputs=[ct.TensorType(name="pixels", shape=tuple(example.shape))])
    if options.palettize_bits:
        model = _palettize(model, options.palettize_bits)
    model.user_defined_metadata.update(meta)
    model.user_defined_metadata["edge_toolkit.coreml"] = options.describe()
    model.save(os.fspath(out))


def _palettize(model, bits: int):
    from coremltools.optimize.coreml import (
        OpPalettizerConfig,
        OptimizationConfig,
        palettize_weights,
    )

    config = OptimizationConfig(global_config=OpPalettizerConfig(
        mode="kmeans", nbits=bits, granularity="per_tensor",
        weight_threshold=PALETTE_MIN_WEIGHT))
    return palettize_weights(model, config)


def describe_coreml_vision(path: Path) -> dict:
    """The saved package's inputs and outputs (opened, not run: Core ML needs macOS)."""
    ct = require("coremltools", "coreml", "Core ML export")
    spec = ct.models.MLModel(os.fspath(path), skip_model_load=True).get_spec()
    return {"inputs": [i.name for i in spec.description.input],
            "outputs": [o.name for o in spec.description.output],
            "numerics": "numerics not checked: Core ML runs only on macOS"}
