"""`write_vision_bundle(target, artifact, bundle, options)`: an exported image model as an
app-ready folder (the portrait segmenter, the Mobile V-MoE, the test CNN), staged,
verified and moved into place exactly like an LLM bundle (export.bundle_files).

    DIR/model.onnx | model.tflite        the verified file (export_model; Core ML:
                                         export.coreml_bundle)
        sample_input.bin                 the verification image, float32 little-endian, in
                                         the file's layout
        sample_output_<role>.bin         what the runtime gave on it, one file per output
        bundle.json                      the manifest, written last (export.bundle_read)

The model file is the one `--out` writes, except for a per-image routed mixture of
experts, which gains its routing as a second output (export.bundle_experts). The sample
lets an app's own tests check, without Python, that its runtime (onnxruntime-web,
LiteRT.js) gives what onnxruntime / LiteRT gave here. Its input is the image verification
compared PyTorch and the runtime on (export.vision_job.VERIFY_SEED), so the recorded
outputs are the verified ones; they are computed once more on the file in the staging
folder, since the verification keeps only the errors.

Manifest keys beside the LLM bundle's format, version, target, runtime, source, model,
quantization and files: "kind" (the family's task, "image-segmentation" or
"image-classification"), "family", "inputs" / "outputs" read from the file
(export.bundle_tensors) with each tensor's "role" ("pixels"; "mask" or "logits";
"experts"), "preprocessing", "postprocessing" (export.bundle_vision_sections),
"experts" (null for a model without a per-image router), "verification" and "sample".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.bundle_experts import experts_section, with_expert_output
from export.bundle_files import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    check_bundle_dir,
    files_section,
    model_files,
    staged_bundle,
)
from export.bundle_tensors import describe_io
from export.bundle_vision_sections import (
    CLASSIFICATION,
    SEGMENTATION,
    TASKS,
    check_mask,
    class_labels,
    postprocessing,
    preprocessing,
)
from export.errors import ExportError
from export.options import ExportOptions
from export.registry import get_exporter
from export.report import ExportReport
from export.vision_job import VERIFY_SEED

SAMPLE_INPUT = "sample_input.bin"
# How close an app's runtime must come to the sample outputs: float files 1e-4 of the
# largest |output| (two runtimes of one float graph differ by rounding only); int8 files
# the export's own rtol on the mean error (integer kernels may round differently), as
# export.vision_job judges them. Integer outputs (expert indices) must match exactly.
FLOAT_SAMPLE_RTOL = 1e-4


def write_vision_bundle(target: str, artifact: Any, bundle: Path,
                        options: ExportOptions | None = None) -> ExportReport:
    """Export the vision `artifact` (a models.LoadedModel with a VisionInput) to `target`
    as a bundle at `bundle`; a failed verification comes back with path None and nothing
    written."""
    options = options or ExportOptions()
    if target == "coreml":  # no runtime here: PyTorch's sample (export.coreml_bundle)
        from export.coreml_bundle import write_coreml_vision_bundle

        return write_coreml_vision_bundle(artifact, bundle, options)
    check_bundle_dir(target, bundle, options)
    task = task_of(artifact)
    exported = with_expert_output(artifact)

    def finish(staging: Path, model: Path, report: ExportReport) -> dict:
        return vision_manifest(target, staging, model, artifact, exported, task, report,
                               options)

    return staged_bundle(target, exported, bundle, options, finish)


def task_of(artifact: Any) -> str:
    from models.family import family_named

    if artifact.family is None:
        raise ExportError(f"{artifact.source} belongs to no model family, so whether it "
                          "classifies or segments is unknown: export it with --out")
    task = family_named(artifact.family, source=artifact.source).task
    if task not in TASKS:
        raise ExportError(f"{artifact.source} is a {task} model; vision bundles hold "
                          f"{' and '.join(TASKS)} models: export it with --out")
    return task


def vision_manifest(target: str, staging: Path, model: Path, artifact: Any, exported: Any,
                    task: str, report: ExportReport, options: ExportOptions) -> dict:
    """bundle.json of a vision bundle (see export.bundle_read for each key's meaning)."""
    exporter = get_exporter(target)
    io = describe_io(exporter.runtime, model)
    routed = exported is not artifact
    roles = ["mask" if task == SEGMENTATION else "logits"] + (["experts"] if routed else [])
    if len(io["inputs"]) != 1 or len(io["outputs"]) != len(roles):
        raise ExportError(f"{model.name} has {len(io['inputs'])} inputs and "
                          f"{len(io['outputs'])} outputs, not 1 and {len(roles)}: export it "
                          "again with this version of Edge Toolkit")
    inputs = [{"role": "pixels", **io["inputs"][0]}]
    outputs = [{"role": role, **t} for role, t in zip(roles, io["outputs"], strict=True)]
    layout = report.details["layout"]
    sample = write_sample(staging, exporter, model, artifact.vision, layout, outputs,
                          options)
    main = outputs[0]
    labels = (class_labels(getattr(artifact.vision, "dataset", None), int(main["shape"][-1]))
              if task == CLASSIFICATION else None)
    files = model_files(staging, model)
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": task, "target": target,
        "runtime": exporter.runtime, "source": artifact.source, "family": artifact.family,
        "model": {"file": model.name, "files": files,
                  "external_data": [name for name in files if name != model.name],
                  "signature": io["signature"]},
        "inputs": inputs, "outputs": outputs,
        "preprocessing": preprocessing(artifact.vision, layout, inputs[0]),
        "postprocessing": postprocessing(task, main, labels),
        "experts": experts_section(artifact.module, outputs[1]) if routed else None,
        "quantization": {"carried": report.carried, "dropped": report.dropped,
                         "lost": report.lost, "verdict": report.verdict},
        "verification": _verification(report, exporter.runtime, outputs),
        "sample": sample,
        "files": files_section(staging),
    }


def write_sample(staging: Path, exporter, model: Path, vision, layout: str,
                 outputs: list[dict], options: ExportOptions) -> dict:
    """The verification image and the runtime's outputs on it as raw little-endian files
    in `staging`; the manifest's "sample" section."""
    example = vision.images(1, VERIFY_SEED).float()  # as export.vision_job.write draws it
    if layout == "NHWC":
        example = example.permute(0, 2, 3, 1).contiguous()
    results = exporter.run_vision(model, example)
    pixels = example.numpy()
    write_raw(staging / SAMPLE_INPUT, pixels)
    written = []
    for described, value in zip(outputs, results, strict=True):
        value = np.asarray(value)
        if list(value.shape) != [int(d) for d in described["shape"]]:
            raise ExportError(f"{model.name}'s output {described['name']} came out "
                              f"{list(value.shape)}, not the {described['shape']} the file "
                              "declares: export it again")
        if described["role"] == "mask":
            check_mask(value, described["name"])
        name = f"sample_output_{described['role']}.bin"
        write_raw(staging / name, value)
        written.append({"role": described["role"], "name": described["name"], "file": name,
                        "dtype": value.dtype.name, "shape": list(value.shape)})
    return {
        "input": {"role": "pixels", "file": SAMPLE_INPUT, "dtype": pixels.dtype.name,
                  "shape": list(pixels.shape), "layout": layout},
        "outputs": written, "byte_order": "little",
        "rtol": options.rtol if options.int8 else FLOAT_SAMPLE_RTOL,
        "judged_on": "mean" if options.int8 else "max",
        "note": "raw 0..255 pixels as the file takes them (an int8 input is quantized "
                "from them as preprocessing.quantize says; int8 outputs are dequantized "
                "here); error = |app - sample| / max |sample| per float output, integer "
                "outputs exact",
    }


def write_raw(path: Path, values: np.ndarray) -> None:
    """C-order values, little-endian, no header (a JS typed array reads them as they are)."""
    values = np.ascontiguousarray(values)
    values.astype(values.dtype.newbyteorder("<"), copy=False).tofile(path)


def _verification(report: ExportReport, runtime: str, outputs: list[dict]) -> dict | None:
    """The export's check per output, named as in the file; None with --no-verify."""
    check = report.verification
    if check is None:
        return None
    per_output = [{"role": described["role"], "name": described["name"],
                   "relative_error": o["relative_error"],
                   "mean_relative_error": o["mean_relative_error"],
                   "max_abs_error": o["max_abs_error"], "cosine": o["cosine"],
                   "passed": o["passed"]}
                  for described, o in zip(outputs, check["outputs"], strict=True)]
    return {"passed": bool(check["passed"]), "runtime": runtime, "reference": "PyTorch",
            "rtol": check["rtol"], "judged_on": check["judged_on"], "outputs": per_output}
