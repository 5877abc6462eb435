"""Writing a portrait segmenter artifact (trained, or pruned to other expansion widths):
a thin wrapper that turns the module, its calibration images and input description into
a LoadedModel for `toolkit.artifacts.save_model_artifact`; the portrait family
(models/families/portrait.py) writes `model.safetensors`, the optional
`calibration.safetensors` and its manifest section (full PortraitConfig, input). The
"data" section (what the model was trained and tested on) is built here, from the
toolkit's data sets."""

from __future__ import annotations

from pathlib import Path

import torch

from models.fake_cnn import smooth_images
from models.families.portrait import CALIBRATION_IMAGES, input_section
from models.portrait import MEAN, STD, PortraitSegmenter
from models.registry import LoadedModel
from models.vision_input import VisionInput
from toolkit.artifacts import save_model_artifact
from toolkit.data.portraits import PortraitSet

__all__ = ["CALIBRATION_IMAGES", "data_section", "input_section", "save_portrait_artifact"]


def data_section(train: PortraitSet, test: PortraitSet | None, *, generated: bool,
                 seed: int | None, test_seed: int | None = None) -> dict:
    """What the model was trained and tested on; `generated` marks synthetic portraits,
    whose numbers say nothing about real photos."""
    section = {"generated": generated,
               "description": ("generated data: synthetic portraits" if generated
                               else "user-provided portrait folder"),
               "train": {"source": train.source, "count": len(train), "sha256": train.sha256,
                         "seed": seed},
               "attribute_names": list(train.attribute_names)}
    if test is not None:
        section["test"] = {"source": test.source, "count": len(test), "sha256": test.sha256,
                           "seed": test_seed}
    return section


def save_portrait_artifact(out: Path, module: PortraitSegmenter, manifest: dict | None = None,
                           *, calibration: torch.Tensor | None = None,
                           input_info: dict | None = None, overwrite: bool = False,
                           recipe_yaml: str | None = None) -> Path:
    """Write `module` (any hidden_channels) to `out`. `manifest`: extra toolkit.json keys
    (e.g. "data" from data_section, "metrics", "training", "pruning"); it is filled in
    place with the schema keys, family, config, input and files, so a caller's --json
    report has them. `calibration`: raw uint8 images [N, 3, H, W] to store (first 16
    kept); `recipe_yaml`: the recipe that made it, written as recipe.yaml."""
    config = module.config
    info = input_info or input_section()
    mean, std = tuple(info.get("mean", MEAN)), tuple(info.get("std", STD))
    vision = VisionInput((1, 3, config.height, config.width), mean, std,
                         images=smooth_images, samples=calibration)
    loaded = LoadedModel(module=module, tokenizer=None, source="portrait", vision=vision)
    full = manifest if manifest is not None else {}
    full["input"] = dict(info)
    return save_model_artifact(out, loaded, full, recipe_yaml=recipe_yaml,
                               overwrite=overwrite)
