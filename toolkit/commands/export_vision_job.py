"""The vision half of `toolkit export`: a registered vision family (one whose LoadedModel
carries `models.vision_input.VisionInput`) is written with export.vision (normalisation
folded in, the runtime's layout), optionally as static int8 LiteRT or QDQ ONNX calibrated
on the family's own images, or as float16 / palettized Core ML, and verified on a
held-out image of the same family.

Tolerances per format: float files pass when max |error| / max |PyTorch| <= --rtol
(1e-3); int8 files when the mean |error| / max |PyTorch| <= --rtol (0.05), because
static int8 moves a few outputs a lot (those whose activations cross a rounding step)
and the rest little, so the largest error overstates what the file does to its output.
Core ML files cannot run off macOS: their I/O is checked."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from export.coreml.vision import CoremlVisionOptions
from export.vision import INT8_TARGETS, Preprocess, VisionExport, export_vision, verify_vision
from toolkit.errors import UserError

INT8_CARRIED = {
    "tflite": "static int8: weights per channel, activations per tensor, int8 input and "
              "output",
    "onnx": "static int8 QDQ: weights per channel (7-bit codes), uint8 activations per "
            "tensor, float input and output",
}
CALIBRATION_SEED = 1
VERIFY_SEED = 10_007  # a different draw from the calibration images
INT8_RTOL = 0.05  # static int8 activations: a few percent is the expected cost


def default_rtol(args: argparse.Namespace) -> float:
    return INT8_RTOL if args.int8 else 1e-3


def write(loaded, staging: Path, args: argparse.Namespace) -> VisionExport:
    spec = loaded.vision
    calibration = None
    if args.int8:
        if args.target not in INT8_TARGETS:
            raise UserError(f"--int8 (static int8) is offered for tflite and onnx, not "
                            f"{args.target}: for Core ML use --fp16 or --palettize-bits")
        calibration = spec.images(args.calibration_images, CALIBRATION_SEED)
    return export_vision(loaded.module, spec.shape, args.target, staging,
                         preprocess=Preprocess(spec.mean, spec.std),
                         int8_calibration=calibration, example=spec.images(1, VERIFY_SEED),
                         coreml=coreml_options(args))


def coreml_options(args: argparse.Namespace) -> CoremlVisionOptions | None:
    """--fp16 / --palettize-bits as Core ML options; None for the other targets."""
    fp16, bits = getattr(args, "fp16", False), getattr(args, "palettize_bits", None)
    if args.target != "coreml":
        if fp16 or bits:
            raise UserError(f"--fp16 and --palettize-bits are Core ML options, not "
                            f"{args.target}: drop them, or use --int8 for {args.target}")
        return None
    return CoremlVisionOptions(fp16=fp16, palettize_bits=bits)


def describe(loaded, result: VisionExport, size: int) -> dict:
    params = sum(p.numel() for p in loaded.module.parameters())
    carried = {}
    if result.int8:
        carried[INT8_CARRIED[result.target]] = 1
    if result.coreml is not None and (result.coreml.fp16 or result.coreml.palettize_bits):
        carried[result.coreml.describe()] = 1
    return {"target": result.target, "source": loaded.source, "float32_bytes": 4 * params,
            "float_file_bytes": result.float_bytes, "file_bytes": size,
            "layout": result.layout, "input_shape": list(result.example.shape),
            "carried": carried, "carried_layers": 0, "dropped": []}


def verify(result: VisionExport, args: argparse.Namespace) -> dict:
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
                                        "passed": _error(a, result.int8) <= args.rtol}
               for a in checked]
    return {"outputs": outputs, "rtol": args.rtol,
            "judged_on": "mean" if result.int8 else "max",
            "passed": all(o["passed"] for o in outputs)}


def _error(check, int8: bool) -> float:
    """The error compared with --rtol: max (float) or mean (int8) |error| / max |PyTorch|."""
    return check.mean_relative_error if int8 else check.relative_error


def verification_rows(check: dict) -> list[list[str]]:
    on = check.get("judged_on", "max")
    key = "mean_relative_error" if on == "mean" else "relative_error"
    rows = [[o["name"] + " vs PyTorch",
             f"max abs error {o['max_abs_error']:.3g}, mean {o['mean_abs_error']:.3g} "
             f"(relative {on} {o[key]:.2g}, limit {check['rtol']:g}), "
             f"cosine {o['cosine']:.6f}"]
            for o in check["outputs"]]
    return rows + [["verdict", "passed" if check["passed"] else "FAILED"]]

