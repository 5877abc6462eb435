"""A tiny random-weight CNN registered as a vision model, for tests of everything that
takes a vision family (export, bench) before the real families exist."""

from __future__ import annotations

import torch
from torch import nn

from models.registry import LoadedModel, register_model
from models.vision_input import VisionInput

FAKE_SEED = 0
SHAPE = (1, 3, 32, 32)


class FakeCnn(nn.Module):
    """Conv + batch norm + depthwise + pointwise convs, global pooling, 10 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU6(),
            nn.Conv2d(32, 64, 1), nn.ReLU6(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.classes = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classes(self.features(x).mean(dim=(2, 3)))


def smooth_images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    """Random 4x4 colour patterns upsampled to `size`: smoother, more photo-like, than
    per-pixel noise. Raw pixels in 0..255."""
    coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") * 255


@register_model("fake-cnn", family="cnn", weights="random, generated (tests)",
                description="4-conv CNN on 32x32 RGB, 10 classes", fake=True)
def fake_cnn() -> LoadedModel:
    torch.manual_seed(FAKE_SEED)
    module = FakeCnn()
    with torch.no_grad():  # a batch norm that is not the identity when folded
        module.features[1].running_mean.uniform_(-0.5, 0.5)
        module.features[1].running_var.uniform_(0.5, 2.0)
    return LoadedModel(module=module.eval(), tokenizer=None, source="fake-cnn",
                       vision=VisionInput(SHAPE, mean=(0.485, 0.456, 0.406),
                                          std=(0.229, 0.224, 0.225), images=smooth_images))
