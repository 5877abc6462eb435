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
