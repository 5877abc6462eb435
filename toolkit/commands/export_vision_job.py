"""The vision half of `toolkit export`: a registered vision family (one whose LoadedModel
carries `models.vision_input.VisionInput`) is written with export.vision (normalisation
folded in, the runtime's layout), optionally as static int8 LiteRT calibrated on the
family's own images, and verified on a held-out image of the same family."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from export.vision import Preprocess, VisionExport, export_vision, verify_vision
from toolkit.errors import UserError

CALIBRATION_SEED = 1
VERIFY_SEED = 10_007  # a different draw from the calibration images
INT8_RTOL = 0.05  # static int8 activations: a few percent is the expected cost


def default_rtol(args: argparse.Namespace) -> float:
    return INT8_RTOL if args.int8 else 1e-3


def write(loaded, staging: Path, args: argparse.Namespace) -> VisionExport:
    spec = loaded.vision
    calibration = None
    if args.int8:
        if args.target != "tflite":
            raise UserError(f"--int8 (static int8) is offered for tflite only, not "
                            f"{args.target}: drop --int8 or export to tflite")
        calibration = spec.images(args.calibration_images, CALIBRATION_SEED)
    return export_vision(loaded.module, spec.shape, args.target, staging,
                         preprocess=Preprocess(spec.mean, spec.std),
                         int8_calibration=calibration, example=spec.images(1, VERIFY_SEED))


def describe(loaded, result: VisionExport, size: int) -> dict:
    params = sum(p.numel() for p in loaded.module.parameters())
    carried = ({"static int8: weights per channel, activations per tensor, int8 input "
                "and output": 1} if result.int8 else {})
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
    outputs = [dataclasses.asdict(a) | {"passed": a.relative_error <= args.rtol}
               for a in checked]
    return {"outputs": outputs, "rtol": args.rtol,
            "passed": all(o["passed"] for o in outputs)}


def verification_rows(check: dict) -> list[list[str]]:
    rows = [[o["name"] + " vs PyTorch",
             f"max abs error {o['max_abs_error']:.3g} (relative {o['relative_error']:.2g}, "
             f"limit {check['rtol']:g}), cosine {o['cosine']:.6f}"]
            for o in check["outputs"]]
    return rows + [["verdict", "passed" if check["passed"] else "FAILED"]]
