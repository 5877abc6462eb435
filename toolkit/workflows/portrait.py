"""The portrait-segmenter workflow: calibrate (and distil) on portraits with masks,
evaluate before and after on held-out portraits, save a portrait artifact
(toolkit/portrait_artifact.py) that `toolkit export` reads.

Data: the synthetic generator (toolkit/data/portraits) at the model's input size, unless
the recipe's `calibration: data` (`--calib-data DIR`) names a folder of image/mask pairs,
which is split into calibration and held-out portraits. When the artifact says it was
trained on a user's folder, synthetic portraits would judge it on images unlike its own:
the folder must be passed. Synthetic calibration portraits use the artifact's training
seed, held-out ones its recorded test seed (so the numbers compare with training's); a
registered model gets the recipe's seed and seed + TEST_SEED_OFFSET, as `toolkit train
portrait` uses. Every stage gets the calibration portraits' soft boundary labels.

Metrics, the same protocol before and after (toolkit/eval/portrait_eval.py): mIoU,
boundary-band mIoU and boundary F against the true masks; after compression also the
agreement with the unpruned model: IoU of the two person masks, share of pixels with the
same label, and the per-pixel KL of their 3-class distributions.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from models import LoadedModel
from models.portrait import PortraitSegmenter, foreground_probability
from toolkit.artifacts import load_manifest
from toolkit.commands.train_portrait_job import TEST_SEED_OFFSET
from toolkit.data.portraits import PortraitSet, generate_portraits, load_portrait_folder
from toolkit.errors import UserError
from toolkit.eval.portrait_eval import THRESHOLD, evaluate_portraits
from toolkit.recipe import CalibrationSpec
from toolkit.report import format_table
from toolkit.train.portrait_losses import soft_boundary_labels
from toolkit.workflows.base import CalibrationData, Workflow, last_report, timing_line

DEFAULT_SAMPLES = 64
HELD_OUT_PORTRAITS = 64
# Share of a user's folder held out for the metrics when the recipe names one.
FOLDER_HELD_OUT = 0.25
# Soft-label band, pixels per side: the trainer's default (PortraitTrainSettings).
BAND_WIDTH = 4
EVAL_BATCH = 16


def calibration(loaded: LoadedModel, spec: CalibrationSpec) -> CalibrationData:
    calib_set, held_out = portrait_data(loaded, spec)
    description = {"source": calib_set.source, "count": len(calib_set),
                   "sha256": calib_set.sha256, "soft_label_band": BAND_WIDTH}
    held_out_description = {"source": held_out.source, "count": len(held_out),
                            "sha256": held_out.sha256}
    labels = soft_boundary_labels(calib_set.masks, BAND_WIDTH)
    return CalibrationData(loaded.vision.normalise(calib_set.images), description,
                           options={"labels": labels}, held_out=held_out,
                           held_out_description=held_out_description, raw=calib_set.images,
                           samples=len(calib_set))


def portrait_data(loaded: LoadedModel, spec: CalibrationSpec
                  ) -> tuple[PortraitSet, PortraitSet]:
    """(calibration portraits, held-out portraits) at the model's input size."""
    height, width = loaded.vision.shape[-2:]
    if spec.file is not None:
        folder = load_portrait_folder(spec.file, height, width)
        calib, held_out = folder.split(FOLDER_HELD_OUT, spec.seed)
        if spec.samples:
            count = min(spec.samples, len(calib))
            calib = calib.subset(torch.arange(count), f"first {count}")
        return calib, held_out
    trained_on = source_data(loaded.source) or {}
    if trained_on.get("generated") is False:
        where = (trained_on.get("train") or {}).get("source", "a portrait folder")
        raise UserError(f"{loaded.source} was trained on {where}, not on synthetic portraits: "
                        "pass that folder with --calib-data DIR to calibrate and evaluate "
                        "on the same kind of images")
    train_seed = (trained_on.get("train") or {}).get("seed")
    test_seed = (trained_on.get("test") or {}).get("seed")
    # Calibrate on the portraits the model was trained on (sample i of a seed is the same
    # image whatever the count); hold out those of its test seed, as training did.
    calib_seed = spec.seed if train_seed is None else train_seed
    if test_seed is None or test_seed == calib_seed:
        test_seed = calib_seed + TEST_SEED_OFFSET
    count = spec.samples or DEFAULT_SAMPLES
    return (generate_portraits(count, calib_seed, height, width),
            generate_portraits(HELD_OUT_PORTRAITS, test_seed, height, width))


def source_data(source: str) -> dict | None:
    """The "data" section of the source artifact's manifest (None for a registered name)."""
    directory = Path(source)
    manifest = load_manifest(directory) if directory.is_dir() else None
    return (manifest or {}).get("data")


@torch.no_grad()
def evaluate(loaded: LoadedModel, reference: torch.nn.Module | None, data: CalibrationData,
             _run=None) -> dict:
    """Mask metrics on the held-out portraits; with `reference`, agreement with it too."""
    model, spec, held_out = loaded.module.eval(), loaded.vision, data.held_out
    metrics = evaluate_portraits(model, held_out, preprocess=spec.normalise)
    if reference is None:
        return metrics
    ious, same, kl = [], [], []
    for first in range(0, len(held_out), EVAL_BATCH):
        x = spec.normalise(held_out.images[first:first + EVAL_BATCH])
        new, old = model.forward_train(x).logits, reference.forward_train(x).logits
        p_new = (foreground_probability(new) > THRESHOLD).to(torch.uint8)
        p_old = (foreground_probability(old) > THRESHOLD).to(torch.uint8)
        ious.append(_person_iou(p_new, p_old))
        same.append((p_new == p_old).flatten(1).float().mean(1))
        log_new, log_old = F.log_softmax(new, 1), F.log_softmax(old, 1)
        kl.append((log_old.exp() * (log_old - log_new)).sum(1).flatten(1).mean(1))
    metrics.update({"mask_iou_to_original": float(torch.cat(ious).mean()),
                    "pixel_agreement": float(torch.cat(same).mean()),
                    "kl_to_original": float(torch.cat(kl).mean())})
    return metrics


def _person_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|A & B| / |A | B| of two person masks [N, 1, H, W] per image; 1 when both are empty."""
    inter = ((a != 0) & (b != 0)).flatten(1).sum(1).double()
    union = ((a != 0) | (b != 0)).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def manifest_fields(loaded: LoadedModel, stages: list[dict], _data, _run) -> dict:
    # "pruning": the channel-pruning report at the top level, where the portrait
    # artifacts written before recipes kept it; "data": what the source was trained on.
    return {"pruning": last_report(stages, "channel-prune"), "data": source_data(loaded.source)}


def summary(manifest: dict, out: Path) -> str:
    pruning, metrics = manifest["pruning"] or {}, manifest["metrics"]
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    flops = [pruning.get(key) for key in ("flops_before", "flops_after")]
    mflops = [None if f is None else f / 1e6 for f in flops]
    rows = [["original", before.get("miou"), before.get("band_iou"), before.get("boundary_f"),
             None, pruning.get("params_before"), mflops[0]],
            [manifest["method"]["method"], after.get("miou"), after.get("band_iou"),
             after.get("boundary_f"), after.get("mask_iou_to_original"),
             pruning.get("params_after"), mflops[1]]]
    lines = [format_table(["model", "mIoU", "band mIoU", "boundary F", "mask IoU to original",
                           "params", "MFLOPs"], rows)]
    if pruning:
        widths = ", ".join(f"{b['hidden_before']}->{b['hidden_after']}"
                           for b in pruning["blocks"])
        lines.append(f"expansion widths: {widths} "
                     f"(removed {pruning['sparsity']['achieved']:.1%})")
    if "before" in metrics:
        lines.append(f"metrics on {metrics['held_out']['source']}")
    return "\n".join([*lines, timing_line(manifest, out)])


WORKFLOW = Workflow(
    name="portrait", kind="portrait segmenter", task="image-segmentation",
    compares_with_original=True,
    accepts=lambda loaded: isinstance(loaded.module, PortraitSegmenter),
    calibration=calibration, evaluate=evaluate, manifest_fields=manifest_fields,
    summary=summary)
