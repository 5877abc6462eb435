"""Loading a portrait segmenter artifact directory (trained by `toolkit train portrait`,
or pruned): `model.safetensors` plus `toolkit.json` whose "family" is "portrait",
"config" the full PortraitConfig (pruned expansion widths in "hidden_channels") and
"input" the pixel normalisation x' = (x / 255 - mean) / std. An optional
`calibration.safetensors` holds a few raw training images (uint8 [N, 3, H, W]) so int8
calibration and export verification see portraits, not placeholder patterns: models/
may not import the generator in toolkit/data/portraits. Never unpickles.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from models.errors import ModelError
from models.fake_cnn import smooth_images
from models.portrait import PortraitConfig, PortraitSegmenter
from models.registry import LoadedModel
from models.vision_files import read_safetensors
from models.vision_input import VisionInput
from models.weights_check import check_state_matches

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


def load_portrait_directory(path: Path) -> LoadedModel:
    toolkit_json = path / "toolkit.json"
    try:
        manifest = json.loads(toolkit_json.read_text(encoding="utf-8"))
        config = config_from_dict(manifest["config"])
        mean = tuple(float(v) for v in manifest["input"]["mean"])
        std = tuple(float(v) for v in manifest["input"]["std"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, ModelError):
            raise ModelError(f"{toolkit_json}: {exc}") from None
        raise ModelError(f"{toolkit_json} lacks a readable portrait config or input section "
                         f"({type(exc).__name__}: {exc}): re-create the artifact with "
                         "`toolkit train portrait`") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ModelError(f"{toolkit_json}: input mean/std must be 3 values (std > 0)")
    module = PortraitSegmenter(config)
    state = read_safetensors(path / WEIGHTS)
    check_state_matches(path / WEIGHTS, module, state)
    module.load_state_dict(state, strict=True)
    shape = (1, 3, config.height, config.width)
    images = _calibration_images(path, config)
    return LoadedModel(module=module.eval(), tokenizer=None, source=str(path),
                       vision=VisionInput(shape, mean, std, images=images))


def _calibration_images(path: Path, config: PortraitConfig):
    """(count, seed) -> raw-pixel float images: seeded draws from the stored training
    images when the artifact has them, else smooth placeholder patterns."""
    stored = None
    if (path / CALIBRATION).is_file():
        stored = read_safetensors(path / CALIBRATION).get(CALIBRATION_KEY)
        if stored is None or tuple(stored.shape[1:]) != (3, config.height, config.width):
            raise ModelError(f"{path / CALIBRATION} must hold '{CALIBRATION_KEY}' uint8 "
                             f"[N, 3, {config.height}, {config.width}]: re-create the artifact")

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
