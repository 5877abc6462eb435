"""What a V-MoE artifact records beside its weights: the config as JSON values, and the
image source its "input" section names (Fashion-MNIST's splits when the model was trained
on them and they are installed, else smooth synthetic images). The family
(models/families/vmoe.py) reads and writes the artifact."""

from __future__ import annotations

import dataclasses

import torch

from models import fashion_mnist
from models.fake_cnn import smooth_images
from models.vision_input import VisionInput
from models.vmoe import VMoEConfig

FASHION_MNIST = "fashion-mnist"


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
