"""The portrait half of `toolkit compress` (today: `--method channel-prune`): calibrate and
recover on portraits with masks, evaluate before and after on held-out portraits, save a
portrait artifact (toolkit/portrait_artifact.py) that `toolkit export` reads.

Data: the synthetic generator (toolkit/data/portraits) at the model's input size, unless
`--calib-data DIR` names a folder of image/mask pairs, which is split into calibration
and held-out portraits. When the artifact says it was trained on a user's folder, the
synthetic portraits would judge it on images unlike its own: it must be passed with
--calib-data. Synthetic calibration portraits use the artifact's training seed, held-out
ones its recorded test seed (so the numbers compare with training's); a registered model
gets --seed and --seed + TEST_SEED_OFFSET, as `toolkit train portrait` uses.

Metrics, the same protocol before and after (toolkit/eval/portrait_eval.py): mIoU,
boundary-band mIoU and boundary F against the true masks; after compression also the
agreement with the unpruned model: IoU of the two person masks, share of pixels with the
same label, and the per-pixel KL of their 3-class distributions.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from compress.config import MethodConfig
from models import LoadedModel
from models.portrait import foreground_probability
from toolkit.artifacts import check_output_dir, load_manifest
from toolkit.commands.common import apply_with_progress, write_json
from toolkit.commands.train_portrait_job import TEST_SEED_OFFSET
from toolkit.data.portraits import PortraitSet, generate_portraits, load_portrait_folder
from toolkit.errors import UserError
from toolkit.eval.portrait_eval import THRESHOLD, evaluate_portraits
from toolkit.manifest import library_versions, timestamp
from toolkit.portrait_artifact import input_section, save_portrait_artifact
from toolkit.report import format_table
from toolkit.train.portrait_losses import soft_boundary_labels

DEFAULT_CALIB_PORTRAITS = 64
HELD_OUT_PORTRAITS = 64
# Share of a user's folder held out for the metrics when --calib-data names one.
FOLDER_HELD_OUT = 0.25
# Soft-label band, pixels per side: the trainer's default (PortraitTrainSettings).
BAND_WIDTH = 4
EVAL_BATCH = 16


def run_portrait_compression(loaded: LoadedModel, config: MethodConfig,
                             args: argparse.Namespace) -> int:
    out: Path = args.out.expanduser()
    check_output_dir(out, args.overwrite)
    spec = loaded.vision
    calib_set, held_out = portrait_data(loaded, args)
    calib = spec.normalise(calib_set.images)
    labels = soft_boundary_labels(calib_set.masks, BAND_WIDTH)
    original = copy.deepcopy(loaded.module).eval()
    before = None if args.no_eval else evaluate(original, None, held_out, spec)
    report, seconds = apply_with_progress(loaded.module, config, calib, quiet=args.quiet,
                                          labels=labels)
    module = loaded.module.eval()
    after = None if args.no_eval else evaluate(module, original, held_out, spec)
    manifest = {
        "created": timestamp(), "source_model": loaded.source, "model_name": loaded.name,
        "method": config.to_dict(), "pruning": report.manifest_section(),
        "data": source_data(loaded.source),
        "calibration": {"source": calib_set.source, "count": len(calib_set),
                        "sha256": calib_set.sha256, "soft_label_band": BAND_WIDTH},
        "metrics": {"held_out": {"source": held_out.source, "count": len(held_out),
                                 "sha256": held_out.sha256},
                    "before": before, "after": after},
        "versions": library_versions(),
        "timing_seconds": {"compress_total": seconds, **report.seconds},
    }
    save_portrait_artifact(out, module, manifest, calibration=calib_set.images,
                           input_info=input_section(spec.mean, spec.std),
                           overwrite=args.overwrite)
    print(summary(manifest, out))
    write_json(args.json, {**manifest, "output": str(out)})
    return 0


def portrait_data(loaded: LoadedModel, args: argparse.Namespace
                  ) -> tuple[PortraitSet, PortraitSet]:
    """(calibration portraits, held-out portraits) at the model's input size."""
    height, width = loaded.vision.shape[-2:]
    if args.calib_data is not None:
        folder = load_portrait_folder(args.calib_data.expanduser(), height, width)
        calib, held_out = folder.split(FOLDER_HELD_OUT, args.seed)
        if args.calib_samples:
            calib = calib.subset(torch.arange(min(args.calib_samples, len(calib))),
                                 f"first {min(args.calib_samples, len(calib))}")
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
    calib_seed = args.seed if train_seed is None else train_seed
    if test_seed is None or test_seed == calib_seed:
        test_seed = calib_seed + TEST_SEED_OFFSET
    count = args.calib_samples or DEFAULT_CALIB_PORTRAITS
    return (generate_portraits(count, calib_seed, height, width),
            generate_portraits(HELD_OUT_PORTRAITS, test_seed, height, width))


def source_data(source: str) -> dict | None:
    """The "data" section of the source artifact's manifest (None for a registered name)."""
    directory = Path(source)
    manifest = load_manifest(directory) if directory.is_dir() else None
    return (manifest or {}).get("data")


@torch.no_grad()
def evaluate(model: torch.nn.Module, reference: torch.nn.Module | None, data: PortraitSet,
             spec) -> dict:
    """Mask metrics on `data`; with `reference`, agreement with it as well."""
    metrics = evaluate_portraits(model, data, preprocess=spec.normalise)
    if reference is None:
        return metrics
    ious, same, kl = [], [], []
    for first in range(0, len(data), EVAL_BATCH):
        x = spec.normalise(data.images[first:first + EVAL_BATCH])
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


def summary(manifest: dict, out: Path) -> str:
    pruning, metrics = manifest["pruning"], manifest["metrics"]
    before, after = metrics["before"] or {}, metrics["after"] or {}
    rows = [["original", before.get("miou"), before.get("band_iou"), before.get("boundary_f"),
             None, pruning["params_before"], pruning["flops_before"] / 1e6],
            [manifest["method"]["method"], after.get("miou"), after.get("band_iou"),
             after.get("boundary_f"), after.get("mask_iou_to_original"),
             pruning["params_after"], pruning["flops_after"] / 1e6]]
    lines = [format_table(["model", "mIoU", "band mIoU", "boundary F", "mask IoU to original",
                           "params", "MFLOPs"], rows)]
    widths = ", ".join(f"{b['hidden_before']}->{b['hidden_after']}" for b in pruning["blocks"])
    lines.append(f"expansion widths: {widths} (removed {pruning['sparsity']['achieved']:.1%})")
    if metrics["before"] is not None:
        lines.append(f"metrics on {metrics['held_out']['source']}")
    lines.append(f"compression: {manifest['timing_seconds']['compress_total']:.1f} s; "
                 f"output: {out}")
    return "\n".join(lines)
