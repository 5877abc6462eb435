"""The image-classifier workflow (Mobile V-MoE, and any classifier with a vision input):
calibration images from the model's own image source; evaluated the same way before and
after: top-1 accuracy on the family's labelled test set when it has one (Fashion-MNIST's
test split for a V-MoE trained on it), and on held-out images always, after compression,
top-1 agreement with the uncompressed model and the mean KL(original || compressed) of
their class distributions. A V-MoE is saved as a V-MoE artifact `toolkit export` reads."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from models import LoadedModel
from toolkit.errors import UserError
from toolkit.recipe import CalibrationSpec
from toolkit.report import format_table
from toolkit.workflows.base import CalibrationData, Workflow, last_report, timing_line

DEFAULT_SAMPLES = 512
HELD_OUT_IMAGES = 1000
EVAL_BATCH = 256


def calibration(loaded: LoadedModel, spec: CalibrationSpec) -> CalibrationData:
    """`spec.samples` images (the family's default 512) drawn with `spec.seed`; the
    held-out images use seed + 1, so they differ from the calibration ones."""
    if spec.file is not None:
        raise UserError(f"calibration data {spec.file}: an image classifier calibrates on "
                        "its own image source; leave out --calib-data (calibration: data)")
    vision = loaded.vision
    samples = spec.samples or DEFAULT_SAMPLES
    calib = vision.normalise(vision.images(samples, spec.seed))
    held_out = vision.normalise(vision.images(HELD_OUT_IMAGES, spec.seed + 1))
    description = {"images": samples, "seed": spec.seed,
                   "source": "the model's own image source (models.vision_input)"}
    return CalibrationData(calib, description, held_out=held_out, samples=samples)


@torch.no_grad()
def evaluate(loaded: LoadedModel, reference: torch.nn.Module | None, data: CalibrationData,
             _run=None) -> dict:
    """Accuracy on the labelled test set (if any); agreement and KL with `reference`."""
    model, spec, held_out = loaded.module.eval(), loaded.vision, data.held_out
    metrics: dict = {"held_out_images": int(held_out.shape[0])}
    if spec.labelled_test is not None:
        pixels, labels = spec.labelled_test()
        predictions = torch.cat([logits(model, spec.normalise(chunk)).argmax(dim=-1)
                                 for chunk in pixels.split(EVAL_BATCH)])
        metrics["test_accuracy"] = float((predictions == labels).float().mean())
        metrics["test_images"] = int(labels.numel())
    if reference is not None:
        new, old = logits(model, held_out), logits(reference, held_out)
        metrics["top1_agreement"] = float((new.argmax(-1) == old.argmax(-1)).float().mean())
        metrics["kl_to_original"] = float(F.kl_div(F.log_softmax(new, -1),
                                                   F.log_softmax(old, -1),
                                                   reduction="batchmean", log_target=True))
    return metrics


def logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(chunk) for chunk in images.split(EVAL_BATCH)]).float()


def manifest_fields(_loaded, stages: list[dict], _data, _run) -> dict:
    # "report": the expert-dropping report at the top level, where readers of the V-MoE
    # artifacts written before recipes (and `summary`) find it.
    return {"report": last_report(stages, "drop-experts")}


def summary(manifest: dict, out: Path) -> str:
    report, metrics = manifest["report"] or {}, manifest["metrics"]
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    rows = [["original", before.get("test_accuracy"), None, report.get("params_before")],
            [manifest["method"]["method"], after.get("test_accuracy"),
             after.get("top1_agreement"), report.get("params_after")]]
    lines = [format_table(["model", "test accuracy", "agreement", "params"], rows)]
    for group in report.get("groups", []):
        lines.append(f"{group['name']}: kept experts {group['kept']} of "
                     f"{group['experts_before']}, dropped {group['dropped']}")
    return "\n".join([*lines, timing_line(manifest, out)])


WORKFLOW = Workflow(
    name="image-classifier", kind="image classifier", task="image-classification",
    compares_with_original=True,
    accepts=lambda loaded: loaded.vision is not None and loaded.tokenizer is None,
    calibration=calibration, evaluate=evaluate, manifest_fields=manifest_fields,
    summary=summary)
