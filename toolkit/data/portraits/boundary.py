"""Where a mask's contour is: each pixel's distance to the other class, and the band of
pixels near the contour that the boundary-sensitive labels (arXiv 1712.08675) and the
boundary metrics look at. Pure tensor functions (max pooling), batched.

    d(p) = min over pixels q of the other class of max(|p_x - q_x|, |p_y - q_y|)
    band(width) = {p : d(p) <= width}

d is the chessboard distance: a pixel touching the other class (8-neighbourhood) has
d = 1, so the band is `width` pixels deep on each side of the contour (2 * width
across). The image border is not a contour.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def contour_distance(masks: torch.Tensor, max_distance: int) -> torch.Tensor:
    """int64 [N, 1, H, W]: d(p) for masks [N, 1, H, W] (nonzero = person), capped at
    max_distance + 1 (also where the other class is absent)."""
    if max_distance < 1:
        raise ValueError(f"max_distance must be at least 1, got {max_distance}")
    person = (masks != 0).float()
    near_person, near_background = person, 1 - person
    beyond = torch.full(person.shape, max_distance + 1, dtype=torch.int64,
                        device=masks.device)
    for _ in range(max_distance):
        # One 3x3 dilation more: pixels within chessboard distance k of each class.
        # max_pool2d pads with -inf, so nothing leaks in from outside the image.
        near_person = F.max_pool2d(near_person, 3, stride=1, padding=1)
        near_background = F.max_pool2d(near_background, 3, stride=1, padding=1)
        reached = torch.where(person > 0, near_background, near_person) > 0
        beyond -= reached.long()
    return beyond


def boundary_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """bool [N, 1, H, W]: pixels within `width` (chessboard) of the contour, both sides."""
    return contour_distance(masks, width) <= width
