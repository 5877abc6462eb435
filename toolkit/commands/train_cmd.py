"""`toolkit train vmoe`: train Mobile V-MoE (or its dense baseline) and save an artifact
that `toolkit compress --method drop-experts` and `toolkit export` read."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from models.load import load_model
from models.registry import LoadedModel
from models.vmoe import FASHION_MNIST, VIT_TINY_IMAGENET, VisionMoE
from models.vmoe_artifact import FASHION_MNIST as FASHION_MNIST_DATASET
from models.vmoe_artifact import vision_input
from toolkit.artifacts import check_output_dir, save_model_artifact
from toolkit.commands.common import positive_int, run_with_threads, write_json
from toolkit.commands.train_portrait_job import add_portrait_arguments
from toolkit.commands.upcycle_job import add_upcycle_arguments
from toolkit.data.images import ImageData, fashion_mnist_data, folder_data
from toolkit.errors import UserError
from toolkit.manifest import library_versions, timestamp
from toolkit.report import format_table
from toolkit.train.superclass import confusion_matrix, superclasses_from_confusion
from toolkit.train.vmoe_trainer import (
    ROUTER_MODES,
    TrainSettings,
    evaluate,
    predict,
    train_vmoe,
)

# "fashion-mnist-small": a quarter of the width and half the depth, for smoke runs and
# tests (seconds, not minutes).
CONFIGS = {"fashion-mnist": FASHION_MNIST,
           "fashion-mnist-small": dataclasses.replace(FASHION_MNIST, dim=32, depth=3, heads=2,
                                                      mlp_ratio=2.0),
           "vit-tiny-imagenet": VIT_TINY_IMAGENET}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train one of the toolkit's own models",
                              description="Train a model family the toolkit defines.")
    families = p.add_subparsers(dest="family", metavar="FAMILY", required=True)
    v = families.add_parser(
        "vmoe", help="Mobile V-MoE: per-image routed ViT MoE (arXiv 2309.04354)",
        description="Train a V-MoE (super-class-guided router by default: a dense ViT is "
                    "trained first, its confusions on held-out training images are "
                    "clustered into one super-class per expert) and save an artifact.")
    v.add_argument("--dataset", default="fashion-mnist", metavar="fashion-mnist|DIR",
                   help="fashion-mnist (Debian dataset-fashion-mnist) or a folder with one "
                        "subfolder of images per class (default: %(default)s)")
    v.add_argument("--config", choices=sorted(CONFIGS), default="fashion-mnist",
                   help="model size (default: %(default)s)")
    v.add_argument("--router", choices=ROUTER_MODES, default="superclass",
                   help="superclass (guided), end-to-end (balance-loss ablation) or dense "
                        "(the baseline ViT, no experts) (default: %(default)s)")
    v.add_argument("--experts", type=positive_int, help="experts E (default: the config's)")
    v.add_argument("--top-k", type=positive_int, help="experts per image (default: 1)")
    v.add_argument("--dense", type=Path, metavar="DIR",
                   help="superclass: take the super-classes from this trained dense "
                        "artifact instead of training one")
    v.add_argument("--epochs", type=positive_int, default=3, help="(default: %(default)s)")
    v.add_argument("--dense-epochs", type=positive_int, default=1, metavar="N",
                   help="superclass: epochs of the dense ViT whose confusions give the "
                        "super-classes; its groups are those of longer runs, so one is "
                        "enough (default: %(default)s)")
    v.add_argument("--batch-size", type=positive_int, default=128)
    v.add_argument("--lr", type=float, default=2e-3)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--train-limit", type=positive_int, metavar="N",
                   help="train on the first N training images only (quick runs)")
    v.add_argument("--out", type=Path, required=True, metavar="DIR")
    v.add_argument("--overwrite", action="store_true")
    v.add_argument("--json", type=Path, metavar="PATH")
    v.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op threads (default: %(default)s: this model's ops are too "
                        "small to split, and on a busy 2-core machine 2 threads made a step "
                        "13x slower; a seeded run repeats bit for bit at the same count)")
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.set_defaults(run=run_vmoe)
    u = families.add_parser(
        "upcycle", help="sparse upcycling: a dense LM -> token-routed MoE (arXiv 2212.05055)",
        description="Copy each MLP of a dense decoder into E experts behind a new top-k "
                    "router, train briefly on the Wikipedia calibration pool and save a "
                    "moe-llm artifact (for `toolkit compress --method drop-experts`).")
    add_upcycle_arguments(u)
    add_portrait_arguments(families.add_parser(
        "portrait", help="boundary-sensitive portrait segmenter (arXiv 1712.08675)",
        description="Train the portrait segmenter with boundary-sensitive soft labels, "
                    "a mean-mask prior weight map and a hair-style head, on generated "
                    "synthetic portraits (default) or a folder of image/mask pairs; "
                    "evaluate on held-out portraits and save a portrait artifact."))


def run_vmoe(args: argparse.Namespace) -> int:
    return run_with_threads(args.threads, train_and_save, args)


def train_and_save(args: argparse.Namespace) -> int:
    out = args.out.expanduser()
    check_output_dir(out, args.overwrite)
    if args.lr <= 0:
        raise UserError(f"--lr {args.lr} must be > 0, e.g. 2e-3")
    if args.dense is not None and args.router != "superclass":
        raise UserError(f"--dense is read only by --router superclass, not --router "
                        f"{args.router}: drop --dense or use --router superclass")
    config = CONFIGS[args.config]
    config = dataclasses.replace(config, num_experts=args.experts or config.num_experts,
                                 top_k=args.top_k or config.top_k)
    data = load_data(args, config)
    config = dataclasses.replace(config, num_classes=len(data.classes))
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed)
    start = time.perf_counter()
    manifest: dict = {"created": timestamp(), "router": args.router,
                      "training": {**dataclasses.asdict(settings),
                                   "train_images": int(data.train[1].numel())},
                      "data": {"source": data.source, "sha256": data.sha256,
                               "splits_sha256": data.splits_sha256,
                               "classes": list(data.classes)},
                      "versions": library_versions(), "threads": torch.get_num_threads()}
    superclasses = None
    if args.router == "superclass":
        superclasses, dense_info = super_classes(args, config, data, settings)
        manifest["superclasses"] = describe_groups(superclasses, data.classes)
        manifest["superclass_source"] = dense_info
    model, history = train_vmoe(config, data, args.router, settings,
                                superclasses=superclasses, show_progress=not args.quiet)
    manifest["history"] = history
    manifest["metrics"] = {"test": evaluate(model, data, data.test)}
    manifest["timing_seconds"] = {"total": time.perf_counter() - start}
    dataset = FASHION_MNIST_DATASET if args.dataset == FASHION_MNIST_DATASET else None
    shape = (1, config.channels, config.image_size, config.image_size)
    loaded = LoadedModel(module=model, tokenizer=None, source="toolkit train vmoe",
                         vision=vision_input(shape, tuple(data.mean), tuple(data.std), dataset))
    save_model_artifact(out, loaded, manifest, overwrite=args.overwrite)
    print(summary(model, manifest, out))
    write_json(args.json, {**manifest, "output": str(out)})
    return 0


def load_data(args: argparse.Namespace, config) -> ImageData:
    if args.dataset == "fashion-mnist":
        if config.channels != 1 or config.image_size != 28:
            raise UserError(f"--config {args.config} takes {config.image_size}x"
                            f"{config.image_size}x{config.channels} images; Fashion-MNIST "
                            "is 28x28 grey: use --config fashion-mnist or fashion-mnist-small")
        return fashion_mnist_data(args.seed, args.train_limit)
    return folder_data(Path(args.dataset).expanduser(), config.image_size, config.channels,
                       args.seed, args.train_limit)


def super_classes(args, config, data: ImageData, settings: TrainSettings
                  ) -> tuple[list[int], dict]:
    """Train (or load) the dense ViT, cluster its confusion matrix on the held-out split."""
    if args.dense is not None:
        dense = given_dense(args.dense, config, data)
        source: dict = {"dense_artifact": str(args.dense)}
    else:
        dense_settings = dataclasses.replace(settings, epochs=args.dense_epochs)
        dense, history = train_vmoe(config, data, "dense", dense_settings,
                                    show_progress=not args.quiet)
        source = {"dense_epochs": args.dense_epochs, "dense_trained_here": history,
                  "dense_test": {"accuracy": evaluate(dense, data, data.test)["accuracy"]}}
    predictions, _ = predict(dense, data, data.val[0])
    confusion = confusion_matrix(predictions, data.val[1], len(data.classes))
    source["val_accuracy"] = float((predictions == data.val[1]).float().mean())
    source["confusion_on_held_out_training_images"] = confusion.tolist()
    return superclasses_from_confusion(confusion, config.num_experts), source


def given_dense(path: Path, config, data: ImageData) -> VisionMoE:
    """The dense ViT of a `--router dense` artifact, checked against the data."""
    if not (path.expanduser() / "toolkit.json").is_file():
        raise UserError(f"--dense {path} is not an artifact directory (no toolkit.json): "
                        "pass one written by `toolkit train vmoe --router dense`")
    dense = load_model(str(path.expanduser())).module
    if not isinstance(dense, VisionMoE):
        raise UserError(f"--dense {path} is not a V-MoE artifact: pass one written by "
                        "`toolkit train vmoe --router dense`")
    if dense.config.moe_layers:
        raise UserError(f"--dense {path} is a V-MoE with experts: pass a dense one, "
                        "written by `toolkit train vmoe --router dense`")
    theirs = dense.config
    if (theirs.num_classes, theirs.image_size, theirs.channels) != (
            len(data.classes), config.image_size, config.channels):
        raise UserError(f"--dense {path} takes {theirs.image_size}x{theirs.image_size}x"
                        f"{theirs.channels} images of {theirs.num_classes} classes, the data "
                        f"here {config.image_size}x{config.image_size}x{config.channels} of "
                        f"{len(data.classes)}: train it (--router dense) on the same data")
    return dense


def describe_groups(assignment: list[int], classes: tuple[str, ...]) -> list[list[str]]:
    groups = max(assignment) + 1
    return [[classes[c] for c, g in enumerate(assignment) if g == group]
            for group in range(groups)]


def summary(model: VisionMoE, manifest: dict, out: Path) -> str:
    test = manifest["metrics"]["test"]
    rows = [[manifest["router"], test["accuracy"], test["params_total"], test["params_active"],
             test["flops_per_image"] / 1e6]]
    lines = [format_table(["router", "test accuracy", "params", "active params",
                           "MFLOPs/image"], rows)]
    for i, group in enumerate(manifest.get("superclasses", [])):
        lines.append(f"super-class {i}: {', '.join(group)}")
    lines.append(f"data: {manifest['data']['source']}; "
                 f"{manifest['timing_seconds']['total']:.0f} s; output: {out}")
    return "\n".join(lines)
