"""`write_coreml_vision_bundle(artifact, bundle, options)`: an image model (the portrait
segmenter, the Mobile V-MoE, the test CNN) as an app-ready Core ML folder, staged and
moved into place like every bundle (export.bundle_files), for apps/ios.

    DIR/model.mlpackage/...          the package `toolkit export coreml --out` writes
                                     (float32, or --fp16 / --palettize-bits), checked the
                                     same way: opened with coremltools, its I/O checked,
                                     not run (Core ML runs only on macOS)
        sample_input.bin             the verification image, raw 0..255 float32, NCHW
        sample_output_<role>.bin     the PyTorch model's outputs on it (not Core ML's:
                                     nothing here can run Core ML)
        bundle.json                  the manifest, written last (export.bundle_read)

The manifest has the keys of an ONNX / LiteRT vision bundle (export.vision_bundle), with
what differs said in place:

- "files" lists every file inside the package by its relative path
  ("model.mlpackage/Data/com.apple.CoreML/model.mlmodel", ".../weights/weight.bin", ..),
  so an app checks the package, not only the manifest's neighbours, before
  MLModel.compileModel; "model.files" is the same list;
- "inputs" / "outputs" are read from the package's spec (export.coreml_bundle_io):
  Core ML's own feature names ("pixels"; "linear_9", "div_2", .. as the converter named
  them), dtypes and shapes;
- "verification" is the export's structural check, with "ran": false;
- "sample" records PyTorch's outputs ("produced_by": "PyTorch") with the tolerance an
  app's Core ML run should meet: the export's rtol (1e-3 of the largest output) for a
  float32 package; for float16 and palettized packages, looser limits on the mean error
  that are expectations, not measurements (SAMPLE_LIMITS).

The V-MoE's expert choice is carried as in the other bundles (export.bundle_experts): a
second output, int32 [1, k], computed by the router's top-k inside the package. So the
package differs from `--out`'s by that one output; nothing here checked that Core ML
picks the experts PyTorch picks (a near tie between two router scores could go the other
way in float16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.bundle_experts import experts_section, with_expert_output
from export.bundle_files import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    check_bundle_dir,
    files_section,
    model_files,
    staged_bundle,
)
from export.bundle_vision_sections import (
    CLASSIFICATION,
    SEGMENTATION,
    check_mask,
    class_labels,
    postprocessing,
    preprocessing,
)
from export.coreml_bundle_io import describe_package
from export.errors import ExportError
from export.options import ExportOptions
from export.registry import get_exporter
from export.report import ExportReport
from export.vision import PixelInput, Preprocess
from export.vision_bundle import SAMPLE_INPUT, task_of, write_raw
from export.vision_job import VERIFY_SEED

TARGET = "coreml"
DEPLOYMENT_TARGET = "iOS18"  # export.coreml.vision converts with minimum_deployment_target
PRECISION_KEY = "edge_toolkit.coreml"  # the package metadata export.coreml.vision writes
NOT_RUN = ("Core ML runs only on macOS: the package was opened and its inputs and outputs "
           "checked with coremltools, not run")
# (rtol, judged_on) an app's Core ML run of the sample should meet, by package precision.
# float32: the export's own limit against PyTorch (export.options.FLOAT_RTOL, or --rtol).
# float16: ~1e-3 per op (10-bit mantissa) accumulated over the network; palettized: the
# weights themselves move, as static int8 moves activations (export.options.INT8_RTOL).
# Neither was measured: Core ML cannot run here.
SAMPLE_LIMITS = {"float16": (1e-2, "mean"), "palettized": (0.05, "mean")}


def write_coreml_vision_bundle(artifact: Any, bundle: Path,
                               options: ExportOptions | None = None) -> ExportReport:
    """Export the vision `artifact` (a models.LoadedModel with a VisionInput) to Core ML
    as a bundle at `bundle`; a failed check comes back with path None, nothing written."""
    options = options or ExportOptions()
    check_bundle_dir(TARGET, bundle, options)
    task = task_of(artifact)
    exported = with_expert_output(artifact)

    def finish(staging: Path, model: Path, report: ExportReport) -> dict:
        return coreml_vision_manifest(staging, model, artifact, exported, task, report,
                                      options)

    return staged_bundle(TARGET, exported, bundle, options, finish)


def coreml_vision_manifest(staging: Path, model: Path, artifact: Any, exported: Any,
                           task: str, report: ExportReport, options: ExportOptions) -> dict:
    """bundle.json of a Core ML vision bundle (export.bundle_read lists every key)."""
    exporter = get_exporter(TARGET)
    io = describe_package(model)
    routed = exported is not artifact
    roles = ["mask" if task == SEGMENTATION else "logits"] + (["experts"] if routed else [])
    if len(io["inputs"]) != 1 or len(io["outputs"]) != len(roles):
        raise ExportError(f"{model.name} has {len(io['inputs'])} inputs and "
                          f"{len(io['outputs'])} outputs, not 1 and {len(roles)}: export it "
                          "again with this version of Edge Toolkit")
    inputs = [{"role": "pixels", **io["inputs"][0]}]
    outputs = [{"role": role, **t} for role, t in zip(roles, io["outputs"], strict=True)]
    if routed and not outputs[1]["dtype"].startswith("int"):
        raise ExportError(f"{model.name}'s second output {outputs[1]['name']} is "
                          f"{outputs[1]['dtype']}, not the integer expert choice: export it "
                          "again with this version of Edge Toolkit")
    layout = report.details["layout"]
    precision = io["metadata"].get(PRECISION_KEY, "float32")
    sample = write_reference_sample(staging, exported, artifact.vision, layout, outputs,
                                    _limit(precision, options))
    main = outputs[0]
    labels = (class_labels(getattr(artifact.vision, "dataset", None), int(main["shape"][-1]))
              if task == CLASSIFICATION else None)
    files = model_files(staging, model)
    experts = None
    if routed:
        experts = {**experts_section(artifact.module, outputs[1]),
                   "checked": "not run here: the values Core ML computes were not compared "
                              "with PyTorch's choice (the sample holds PyTorch's)"}
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": task, "target": TARGET,
        "runtime": exporter.runtime, "source": artifact.source, "family": artifact.family,
        "model": {"file": model.name, "files": files, "external_data": [],
                  "signature": None, "package": "mlpackage", "precision": precision,
                  "deployment_target": DEPLOYMENT_TARGET,
                  "spec_version": io["spec_version"],
                  "note": "an ML program package (a folder): compile it on the device "
                          "(MLModel.compileModel) after checking every file in \"files\""},
        "inputs": inputs, "outputs": outputs,
        "preprocessing": _preprocessing(artifact.vision, layout, inputs[0]),
        "postprocessing": postprocessing(task, main, labels),
        "experts": experts,
        "quantization": {"carried": report.carried, "dropped": report.dropped,
                         "lost": report.lost, "verdict": report.verdict},
        "verification": verification(report),
        "sample": sample,
        "files": files_section(staging),
    }


def _preprocessing(vision, layout: str, pixels: dict) -> dict:
    """The vision bundle's section; a --fp16 package takes its raw pixels as float16."""
    section = preprocessing(vision, layout, pixels)
    if pixels["dtype"] != "float32":
        section["note"] = (f"feed raw pixel values 0..255 as {pixels['dtype']}, not 0..1 and "
                           "not normalised: the package divides by 255 and applies mean/std "
                           "itself")
    return section


def _limit(precision: str, options: ExportOptions) -> tuple[float, str]:
    """(rtol, judged_on) for the sample: --rtol when given, else by precision."""
    if options.rtol_given:
        return options.rtol, "max"
    if "palettized" in precision:
        return SAMPLE_LIMITS["palettized"]
    if precision.startswith("float16"):
        return SAMPLE_LIMITS["float16"]
    return options.rtol, "max"


def reference_outputs(exported: Any, vision, layout: str) -> tuple[np.ndarray, list]:
    """The verification image (raw 0..255 pixels in `layout`) and what the PyTorch module
    the package was converted from gives on it, output by output."""
    pixels = vision.images(1, VERIFY_SEED).float()  # as export.vision_job.write draws it
    if layout == "NHWC":
        pixels = pixels.permute(0, 2, 3, 1).contiguous()
    wrapped = PixelInput(exported.module.eval(), layout,
                         Preprocess(tuple(vision.mean), tuple(vision.std))).eval()
    with torch.no_grad():
        results = wrapped(pixels)
    results = results if isinstance(results, tuple) else (results,)
    return pixels.numpy(), [r.detach().numpy() for r in results]


def write_reference_sample(staging: Path, exported: Any, vision, layout: str,
                           outputs: list[dict], limit: tuple[float, str]) -> dict:
    """The sample files in `staging` (PyTorch's outputs) and the manifest's "sample"."""
    pixels, results = reference_outputs(exported, vision, layout)
    if len(results) != len(outputs):
        raise ExportError(f"the PyTorch model gives {len(results)} outputs, the package "
                          f"{len(outputs)}: export it again with this version of Edge Toolkit")
    write_raw(staging / SAMPLE_INPUT, pixels)
    written = []
    for described, value in zip(outputs, results, strict=True):
        if int(np.prod(value.shape)) != int(np.prod(described["shape"])):
            raise ExportError(f"the package's output {described['name']} holds "
                              f"{described['shape']}, PyTorch gives {list(value.shape)}: "
                              "export it again")
        value = value.reshape([int(d) for d in described["shape"]])
        if described["role"] == "mask":
            check_mask(value, described["name"])
        if described["dtype"].startswith("int"):
            value = value.astype(np.int32)
        name = f"sample_output_{described['role']}.bin"
        write_raw(staging / name, value)
        written.append({"role": described["role"], "name": described["name"], "file": name,
                        "dtype": value.dtype.name, "shape": list(value.shape)})
    rtol, judged_on = limit
    return {
        "input": {"role": "pixels", "file": SAMPLE_INPUT, "dtype": pixels.dtype.name,
                  "shape": list(pixels.shape), "layout": layout},
        "outputs": written, "byte_order": "little", "rtol": rtol, "judged_on": judged_on,
        "produced_by": "PyTorch",
        "note": "the outputs are the PyTorch model's (float32) on the sample input, not a "
                "Core ML run's: Core ML cannot run where the bundle was exported. error = "
                "|Core ML - sample| / max |sample| per float output (max or mean as "
                "judged_on says), integer outputs exact; rtol for a float16 or palettized "
                "package is an expectation, not a measurement",
    }


def verification(report: ExportReport) -> dict | None:
    """The export's check of the saved package, said for what it is; None with
    --no-verify."""
    check = report.verification
    if check is None:
        return None
    return {"passed": bool(check.get("passed")), "runtime": check.get("runtime"),
            "ran": False, "reference": None, "numerics": NOT_RUN,
            "checks": check.get("checks", [])}
