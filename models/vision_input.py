"""What a vision family tells the exporter about its input: the fixed NCHW shape its
module takes, the pixel normalisation folded into exported files, and where
representative images come from (static int8 calibration and verification)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


@dataclasses.dataclass(frozen=True)
class VisionInput:
    shape: tuple[int, int, int, int]  # N, C, H, W as the module takes it
    mean: tuple[float, ...]  # x' = (x / 255 - mean) / std, per channel
    std: tuple[float, ...]
    # (count, seed) -> raw-pixel images [count, C, H, W] in 0..255 from the family's data;
    # different seeds give different images (calibration and verification must differ).
    images: Callable[[int, int], torch.Tensor]
    # () -> (raw-pixel images [N, C, H, W], int64 labels [N]) of a labelled held-out set
    # the model was not trained on (e.g. Fashion-MNIST's test split), for accuracy before
    # and after compression; None when the family has none (fakes, a user's folder).
    labelled_test: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
    # The data set the model was trained on, recorded in its artifact (e.g. "fashion-mnist").
    dataset: str | None = None
    # Raw uint8 training images [N, C, H, W] an artifact stores beside the weights, so int8
    # calibration and export checks of a saved model see its own data (portrait family).
    samples: torch.Tensor | None = None

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(x / 255 - mean) / std per channel: raw pixels to what the module takes."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (pixels.float() / 255 - mean) / std
