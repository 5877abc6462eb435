"""What a portrait artifact records beside its weights: the full PortraitConfig as JSON
values (pruned expansion widths in "hidden_channels"), and the optional
`calibration.safetensors` of a few raw training images (uint8 [N, 3, H, W]) from which
int8 calibration and export verification draw portraits, not placeholder patterns
(models/ may not import the generator in toolkit/data/portraits). The family
(models/families/portrait.py) reads and writes the artifact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from models.errors import ModelError
from models.fake_cnn import smooth_images
from models.portrait import PortraitConfig

FAMILY = "portrait"
WEIGHTS = "model.safetensors"
CALIBRATION = "calibration.safetensors"
CALIBRATION_KEY = "images"


def config_dict(config: PortraitConfig) -> dict:
    """The config as JSON values (hidden_channels as a list)."""
    values = dataclasses.asdict(config)
    values["hidden_channels"] = list(config.hidden_channels)
    return values


def config_from_dict(values: dict) -> PortraitConfig:
    """Inverse of config_dict; unknown or ill-typed keys are a TypeError/ValueError."""
    values = dict(values)
    values["hidden_channels"] = tuple(int(w) for w in values.get("hidden_channels", ()))
    return PortraitConfig(**values)


def check_stored_images(path: Path, stored, config: PortraitConfig) -> torch.Tensor:
    """The stored calibration images, or a ModelError when they do not fit the model."""
    if stored is None or tuple(stored.shape[1:]) != (3, config.height, config.width):
        raise ModelError(f"{path} must hold '{CALIBRATION_KEY}' uint8 "
                         f"[N, 3, {config.height}, {config.width}]: re-create the artifact")
    return stored


def portrait_images(config: PortraitConfig, stored: torch.Tensor | None):
    """(count, seed) -> raw-pixel float images: seeded draws from the stored training
    images when there are some, else smooth placeholder patterns."""

    def images(count: int, seed: int) -> torch.Tensor:
        if stored is None:
            side = max(config.height, config.width)
            return smooth_images(count, seed, size=side)[..., :config.height, :config.width]
        generator = torch.Generator().manual_seed(seed)
        # Permutations, repeated when more images are asked for than are stored.
        rounds = -(-count // stored.shape[0])
        order = torch.cat([torch.randperm(stored.shape[0], generator=generator)
                           for _ in range(rounds)])[:count]
        return stored[order].float()

    return images
