"""The vision half of every export target: a registered vision family (one whose
LoadedModel carries `models.vision_input.VisionInput`) is written with export.vision
(normalisation folded in, the runtime's layout), optionally as static int8 LiteRT or QDQ
ONNX calibrated on the family's own images, or as float16 / palettized Core ML, and
verified on a held-out image of the same family.

Tolerances per format: float files pass when max |error| / max |PyTorch| <= rtol
(1e-3); int8 files when the mean |error| / max |PyTorch| <= rtol (0.05), because
static int8 moves a few outputs a lot (those whose activations cross a rounding step)
and the rest little, so the largest error overstates what the file does to its output.
Core ML files cannot run off macOS: their I/O is checked.

Vision compression stages (channel pruning, expert dropping, distillation) change the
graph itself, so every format carries them: nothing of them can be lost here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from export.coreml.vision import CoremlVisionOptions
from export.errors import ExportError
from export.options import ExportOptions
from export.registry import get_exporter
from export.report import ExportReport
from export.sizes import written_bytes
from export.vision import Preprocess, VisionExport, export_vision, int8_targets, verify_vision

CALIBRATION_SEED = 1
VERIFY_SEED = 10_007  # a different draw from the calibration images


def export_vision_artifact(exporter, artifact: Any, out: Path,
                           options: ExportOptions) -> ExportReport:
    result = write(artifact, out, exporter.target, options)
    report = describe(exporter, artifact, result, written_bytes(out))
    if options.verify:
        report.verification = verify(result, options)
    return report


def write(artifact: Any, out: Path, target: str, options: ExportOptions) -> VisionExport:
    spec = artifact.vision
    calibration = None
    if options.int8:
        if target not in int8_targets():
            raise ExportError(f"--int8 (static int8) is offered for "
                              f"{' and '.join(int8_targets())}, not {target}: for Core ML "
                              "use --fp16 or --palettize-bits")
        calibration = spec.images(options.calibration_images, CALIBRATION_SEED)
    return export_vision(artifact.module, spec.shape, target, out,
                         preprocess=Preprocess(spec.mean, spec.std),
                         int8_calibration=calibration, example=spec.images(1, VERIFY_SEED),
                         coreml=coreml_options(target, options))


def coreml_options(target: str, options: ExportOptions) -> CoremlVisionOptions | None:
    """fp16 / palettize_bits as Core ML options; None for the other targets."""
    if not get_exporter(target).vision_precision_options:
        if options.fp16 or options.palettize_bits:
            raise ExportError(f"--fp16 and --palettize-bits are Core ML options, not "
                              f"{target}: drop them, or use --int8 for {target}")
        return None
    return CoremlVisionOptions(fp16=options.fp16, palettize_bits=options.palettize_bits)


def describe(exporter, artifact: Any, result: VisionExport, size: int) -> ExportReport:
    params = sum(p.numel() for p in artifact.module.parameters())
    carried = {}
    if result.int8:
        carried[exporter.vision_int8] = 1
    if result.coreml is not None and (result.coreml.fp16 or result.coreml.palettize_bits):
        carried[result.coreml.describe()] = 1
    return ExportReport(
        target=exporter.target, runtime=exporter.runtime, source=artifact.source,
        file_bytes=size, float32_bytes=4 * params, carried=carried,
        details={"float_file_bytes": result.float_bytes, "layout": result.layout,
                 "input_shape": list(result.example.shape), "carried_layers": 0})


def verify(result: VisionExport, options: ExportOptions) -> dict:
    checked = verify_vision(result)
    if isinstance(checked, dict):  # Core ML: the saved package's I/O, not run
        checks = [{"check": "inputs", "passed": checked["inputs"] == ["pixels"],
                   "detail": ", ".join(checked["inputs"])},
                  {"check": "outputs", "passed": bool(checked["outputs"]),
                   "detail": ", ".join(checked["outputs"])}]
        return {"runtime": "coremltools (file opened, not run)",
                "numerics": checked["numerics"], "checks": checks,
                "passed": all(c["passed"] for c in checks)}
    outputs = [dataclasses.asdict(a) | {"mean_relative_error": a.mean_relative_error,
                                        "passed": _error(a, result.int8) <= options.rtol}
               for a in checked]
    return {"outputs": outputs, "rtol": options.rtol,
            "judged_on": "mean" if result.int8 else "max",
            "passed": all(o["passed"] for o in outputs)}


def _error(check, int8: bool) -> float:
    """The error compared with rtol: max (float) or mean (int8) |error| / max |PyTorch|."""
    return check.mean_relative_error if int8 else check.relative_error
