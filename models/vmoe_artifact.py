"""Loading a trained (or expert-dropped) V-MoE artifact directory: `model.safetensors`
plus `toolkit.json` whose "family" is "vmoe", "config" the VMoEConfig and "input" the
pixel normalisation and the data set the model was trained on. Never unpickles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from models import fashion_mnist
from models.errors import ModelError
from models.fake_cnn import smooth_images
from models.registry import LoadedModel
from models.vision_input import VisionInput
from models.vmoe import VisionMoE, VMoEConfig
from models.weights_check import check_state_matches

FAMILY = "vmoe"
WEIGHTS = "model.safetensors"
FASHION_MNIST = "fashion-mnist"


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / "toolkit.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path / 'toolkit.json'} is not readable JSON ({exc}): re-create "
                         "the artifact with `toolkit train vmoe`") from None
    return manifest


def load_vmoe_directory(path: Path) -> LoadedModel:
    manifest = read_manifest(path)
    try:
        config = VMoEConfig(**manifest["config"])
        info = manifest["input"]
        mean, std = tuple(info["mean"]), tuple(info["std"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path / 'toolkit.json'} lacks a valid V-MoE config or input "
                         f"section ({exc}): re-create the artifact") from None
    if not (path / WEIGHTS).is_file():
        raise ModelError(f"{path / WEIGHTS} is missing: the artifact is incomplete")
    module = VisionMoE(config)
    state = load_file(str(path / WEIGHTS))
    check_state_matches(path / WEIGHTS, module, state)
    module.load_state_dict(state)
    shape = (1, config.channels, config.image_size, config.image_size)
    return LoadedModel(module=module.eval(), tokenizer=None, source=str(path),
                       vision=vision_input(shape, mean, std, info.get("dataset")))


def vision_input(shape: tuple[int, int, int, int], mean: tuple[float, ...],
                 std: tuple[float, ...], dataset: str | None) -> VisionInput:
    """Calibration images from the training split of the model's data set (the test split
    is kept for accuracy), or smooth synthetic images when that data is not installed."""
    if dataset == FASHION_MNIST and fashion_mnist.available():
        return VisionInput(shape, mean, std,
                           images=lambda count, seed: fashion_mnist.sample("train", count, seed),
                           labelled_test=lambda: _float_images(fashion_mnist.load_split("test")),
                           dataset=dataset)
    return VisionInput(shape, mean, std,
                       images=lambda count, seed: smooth_images(count, seed,
                                                                size=shape[-1])[:, :shape[1]],
                       dataset=dataset)


def _float_images(split: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return split[0].float(), split[1]


def config_dict(config: VMoEConfig) -> dict:
    return dataclasses.asdict(config)
