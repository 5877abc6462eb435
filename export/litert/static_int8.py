"""Full-integer (static int8) LiteRT quantization of a float vision .tflite, for CNNs.

Weights int8 per channel, activations int8 per tensor with ranges from calibration images
run through the float file (ai-edge-quantizer's `static_wi8_ai8` recipe, min/max ranges).
Input and output are int8 too, as a phone's integer accelerators want them: an app
quantizes its input with the file's own scale and zero point (export.litert.run_model).
Because the vision export takes raw pixels 0..255, the input's scale comes out close to 1,
so quantizing a uint8 camera frame loses next to nothing.

Transformers are not offered this: TOOLCHAIN.md records the interpreter aborting on a
statically quantized transformer block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.errors import ExportError, require
from export.quiet import captured_console


def quantize_static_int8(float_path: Path, out: Path, samples: list[np.ndarray]) -> None:
    """`samples`: calibration inputs in the float file's layout and dtype (one per step)."""
    require("ai_edge_quantizer", "litert", "static int8 LiteRT quantization")
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    if len(samples) < 1:
        raise ExportError("static int8 needs calibration images: pass at least one (dozens "
                          "of representative images are typical)")
    signatures = Interpreter(model_path=str(float_path)).get_signature_list()
    (signature, io), = signatures.items()
    if len(io["inputs"]) != 1:
        raise ExportError(f"static int8 calibration expects one image input, the file has "
                          f"{len(io['inputs'])}")
    name = io["inputs"][0]
    engine = quantizer.Quantizer(str(float_path))
    engine.load_quantization_recipe(recipe.static_wi8_ai8())
    with captured_console():
        ranges = engine.calibrate({signature: [{name: np.asarray(s, np.float32)}
                                               for s in samples]})
        engine.quantize(ranges).export_model(str(out), overwrite=True)
