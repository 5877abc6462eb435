"""Writing a portrait segmenter artifact (trained, or pruned to other expansion widths):
`model.safetensors`, an optional `calibration.safetensors` of raw training images, and
`toolkit.json` with family "portrait", the full PortraitConfig (hidden_channels
included, so a pruned network is rebuilt from config + weights), the input
normalisation, the data it saw and its metrics. Staged in a sibling, then renamed
(toolkit/artifacts.py). `models/portrait_artifact.py` reads it back."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from models.portrait import CLASSES, MEAN, STD, PortraitSegmenter
from models.portrait_artifact import (
    CALIBRATION,
    CALIBRATION_KEY,
    FAMILY,
    WEIGHTS,
    config_dict,
)
from toolkit.artifacts import save_artifact
from toolkit.data.portraits import PortraitSet

FORMAT = "edge-toolkit-artifact/1"
# Raw training images stored for int8 calibration / export checks: enough for a
# calibration pass, small next to the weights (16 x 256 x 256 x 3 bytes = 3 MiB).
CALIBRATION_IMAGES = 16


def input_section(mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> dict:
    return {"mean": list(mean), "std": list(std), "layout": "NCHW RGB",
            "normalise": "x' = (x / 255 - mean) / std",
            "output": "foreground probability [N, 1, H, W] = p_fg + p_boundary / 2",
            "training_classes": list(CLASSES)}


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
                           input_info: dict | None = None, overwrite: bool = False) -> Path:
    """Write `module` (any hidden_channels) to `out`. `manifest`: extra toolkit.json keys
    (e.g. "data" from data_section, "metrics", "training", "pruning"); it is filled in
    place with the family, config, input and files, so a caller's --json report has
    them. `calibration`: raw uint8 images [N, 3, H, W] to store (first 16 kept)."""
    config = module.config
    state = {name: tensor.detach().contiguous().cpu()
             for name, tensor in module.state_dict().items()}
    files = [WEIGHTS]
    if calibration is not None:
        calibration = calibration[:CALIBRATION_IMAGES].to(torch.uint8).contiguous().cpu()
        if tuple(calibration.shape[1:]) != (3, config.height, config.width):
            raise ValueError(f"calibration images must be [N, 3, {config.height}, "
                             f"{config.width}], got {tuple(calibration.shape)}")
        files.append(CALIBRATION)

    def write(staging: Path) -> None:
        save_file(state, str(staging / WEIGHTS))
        if calibration is not None:
            save_file({CALIBRATION_KEY: calibration}, str(staging / CALIBRATION))

    full = manifest if manifest is not None else {}
    head = {"format": FORMAT, "family": FAMILY, "config": config_dict(config),
            "input": input_info or input_section(), "files": files}
    # Family, config and input first in the file, the caller's keys after.
    rest = {k: v for k, v in full.items() if k not in head}
    full.clear()
    full.update({**head, **rest})
    return save_artifact(out, write, full, overwrite=overwrite)
