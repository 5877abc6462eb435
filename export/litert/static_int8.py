"""Full-integer (static int8) LiteRT quantization of a float vision .tflite, for CNNs.

Weights int8 per channel, activations int8 per tensor with ranges from calibration images
run through the float file (ai-edge-quantizer's `static_wi8_ai8` recipe), the range of a
tensor being its min and max over all calibration images:

    [lo, hi] = [min_n min(a_n), max_n max(a_n)],  s = (hi - lo) / 255

ai-edge-quantizer's own default is a moving average of each image's min and max
(smoothing 0.95), which clips the tensors of every image whose range is wider than the
average. On a portrait segmenter that moved the mask: mean |error| of the probability
map 0.034 and mask IoU 0.55 against the float file, with global min/max 0.0065 and 0.95
(tests/export/test_portrait_export.py's fitted fake).
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
    data = {signature: [{name: np.asarray(s, np.float32)} for s in samples]}
    with captured_console():
        ranges = _global_min_max(engine, float_path, data)
        engine.quantize(ranges).export_model(str(out), overwrite=True)


def _global_min_max(engine, float_path: Path, data: dict) -> dict:
    """Quantizer.calibrate with min/max over all images instead of its moving average.
    The Calibrator takes the update rule; Quantizer.calibrate does not pass one, so its
    recipe manager is borrowed (ai-edge-quantizer 0.10, pinned in TOOLCHAIN.md)."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    manager = getattr(engine, "_recipe_manager", None)
    if manager is None:  # another version: its own calibration, moving average
        return engine.calibrate(data)
    calib = calibrator.Calibrator(float_path.read_bytes(), num_threads=1,
                                  qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate(data, manager)
    return calib.get_model_qsvs()
