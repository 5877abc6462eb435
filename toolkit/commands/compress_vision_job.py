"""The vision half of `toolkit compress`: a method on an image model (expert dropping on
a V-MoE; channel pruning on a portrait segmenter, handed to compress_portrait_job.py),
calibrated on the family's own images, evaluated before and after, saved as a vision
artifact that `toolkit export` reads.

Evaluation, the same protocol before and after: top-1 accuracy on the family's labelled
test set when it has one (Fashion-MNIST's test split for a V-MoE trained on it), and on
held-out images always: top-1 agreement with the uncompressed model and the mean
KL(original || compressed) of their class distributions.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from compress.config import MethodConfig
from models import LoadedModel
from models.portrait import PortraitSegmenter
from models.vmoe import VisionMoE
from models.vmoe_artifact import read_manifest
from toolkit.artifacts import check_output_dir
from toolkit.commands.common import apply_with_progress, write_json
from toolkit.errors import UserError
from toolkit.manifest import library_versions, timestamp
from toolkit.report import format_table
from toolkit.vision_artifact import save_vmoe_artifact

# Methods that run on an image model; the LLM-only ones need token calibration.
MOE_METHODS = ("drop-experts",)
PORTRAIT_METHODS = ("channel-prune",)
VISION_METHODS = (*MOE_METHODS, *PORTRAIT_METHODS)
DEFAULT_CALIB_IMAGES = 512
HELD_OUT_IMAGES = 1000
EVAL_BATCH = 256


def run_vision_compression(loaded: LoadedModel, config: MethodConfig,
                           args: argparse.Namespace) -> int:
    if config.method not in VISION_METHODS:
        raise UserError(f"--method {config.method} needs a language model; {loaded.source} is "
                        f"an image model: use --method {' or '.join(VISION_METHODS)}")
    if isinstance(loaded.module, PortraitSegmenter):
        if config.method not in PORTRAIT_METHODS:
            raise UserError(f"--method {config.method} does not apply to the portrait "
                            f"segmenter {loaded.source}: use --method "
                            f"{' or '.join(PORTRAIT_METHODS)}")
        # Imported here: the portrait data, losses and metrics load only when used.
        from toolkit.commands.compress_portrait_job import run_portrait_compression

        return run_portrait_compression(loaded, config, args)
    if config.method in PORTRAIT_METHODS:
        raise UserError(f"--method {config.method} prunes a portrait segmenter; "
                        f"{loaded.source} is a {type(loaded.module).__name__}: use a portrait "
                        "model (fake-portrait, portrait-256 or a `toolkit train portrait` "
                        f"artifact), or --method {' or '.join(MOE_METHODS)}")
    out: Path = args.out.expanduser()
    check_output_dir(out, args.overwrite)
    spec = loaded.vision
    samples = args.calib_samples or DEFAULT_CALIB_IMAGES
    calib = spec.normalise(spec.images(samples, args.seed))
    held_out = spec.normalise(spec.images(HELD_OUT_IMAGES, args.seed + 1))
    original = copy.deepcopy(loaded.module).eval()
    before = None if args.no_eval else evaluate(original, None, held_out, spec)
    report, seconds = apply_with_progress(loaded.module, config, calib, quiet=args.quiet)
    module = loaded.module.eval()
    after = None if args.no_eval else evaluate(module, original, held_out, spec)
    manifest = {
        "created": timestamp(), "source_model": loaded.source, "model_name": loaded.name,
        "method": config.to_dict(), "report": report.manifest_section(),
        "calibration": {"images": samples, "seed": args.seed,
                        "source": "the model's own image source (models.vision_input)"},
        "metrics": {"before": before, "after": after}, "versions": library_versions(),
        "timing_seconds": {"compress_total": seconds, **report.seconds},
    }
    save_vision_result(out, loaded, manifest, overwrite=args.overwrite)
    print(summary(manifest, out))
    write_json(args.json, {**manifest, "output": str(out)})
    return 0


def save_vision_result(out: Path, loaded: LoadedModel, manifest: dict, *,
                       overwrite: bool) -> Path:
    if not isinstance(loaded.module, VisionMoE):
        raise UserError(f"{loaded.source} is not a V-MoE: only V-MoE artifacts are written "
                        "by `toolkit compress` for image models today")
    source = Path(loaded.source)
    dataset = (read_manifest(source).get("input", {}).get("dataset")
               if (source / "toolkit.json").is_file() else None)
    info = {"mean": list(loaded.vision.mean), "std": list(loaded.vision.std),
            "dataset": dataset}
    return save_vmoe_artifact(out, loaded.module, manifest, info, overwrite=overwrite)


@torch.no_grad()
def evaluate(model: torch.nn.Module, reference: torch.nn.Module | None,
             held_out: torch.Tensor, spec) -> dict:
    """Accuracy on the labelled test set (if any); agreement and KL with `reference`."""
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


def summary(manifest: dict, out: Path) -> str:
    report, metrics = manifest["report"], manifest["metrics"]
    before, after = metrics["before"] or {}, metrics["after"] or {}
    rows = [["original", before.get("test_accuracy"), None, report["params_before"]],
            [manifest["method"]["method"], after.get("test_accuracy"),
             after.get("top1_agreement"), report["params_after"]]]
    lines = [format_table(["model", "test accuracy", "agreement", "params"], rows)]
    for group in report.get("groups", []):
        lines.append(f"{group['name']}: kept experts {group['kept']} of "
                     f"{group['experts_before']}, dropped {group['dropped']}")
    lines.append(f"compression: {manifest['timing_seconds']['compress_total']:.1f} s; "
                 f"output: {out}")
    return "\n".join(lines)
