"""Portrait segmentation metrics on binary masks [N, 1, H, W] (nonzero = person), one
value per image; average them over a test set.

    IoU_c      = |P_c & T_c| / |P_c | T_c|          c in {person, background}
    mIoU       = (IoU_person + IoU_background) / 2
    band mIoU  = the same inside B = {p : d_T(p) <= w}, the truth's contour band of
                 `width` w (toolkit/data/portraits/boundary.py), where the boundary-
                 sensitive network (arXiv 1712.08675) should gain
    F          = 2 P R / (P + R)  on contour pixels with a tolerance r (the DAVIS
                 boundary measure, arXiv 1704.00675): precision P = share of predicted
                 contour pixels within Euclidean distance r of a true contour pixel,
                 recall R the same the other way round

A class absent from both masks (an empty union) scores 1, as does a comparison of two
masks with no contour. Contour pixels are person pixels with a background pixel among
their 4 neighbours (DAVIS uses a thinned boundary map; this one is as thin for masks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from toolkit.data.portraits.boundary import boundary_band


class BoundaryScore(NamedTuple):
    precision: torch.Tensor  # [N]
    recall: torch.Tensor  # [N]
    f_score: torch.Tensor  # [N]


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator per image, 1 where the denominator is 0."""
    num, den = numerator.double(), denominator.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num))


def mean_iou(predicted: torch.Tensor, truth: torch.Tensor,
             region: torch.Tensor | None = None) -> torch.Tensor:
    """float64 [N]: mean of the person and background IoU, over `region` (bool
    [N, 1, H, W]) when given, else the whole image."""
    p, t = predicted != 0, truth != 0
    inside = torch.ones_like(p) if region is None else region.bool()
    scores = []
    for pc, tc in ((p, t), (~p, ~t)):
        intersection = (pc & tc & inside).flatten(1).sum(1)
        union = ((pc | tc) & inside).flatten(1).sum(1)
        scores.append(_ratio(intersection, union))
    return (scores[0] + scores[1]) / 2


def band_iou(predicted: torch.Tensor, truth: torch.Tensor, width: int) -> torch.Tensor:
    """float64 [N]: mIoU inside the truth's contour band, `width` pixels each side."""
    return mean_iou(predicted, truth, boundary_band(truth, width))


def contour_pixels(masks: torch.Tensor) -> torch.Tensor:
    """bool [N, 1, H, W]: person pixels with a background 4-neighbour (not the border)."""
    background = (masks == 0).float()
    cross = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    touching = F.conv2d(background, cross.to(background), padding=1) > 0
    return (masks != 0) & touching


def _within(points: torch.Tensor, radius: float) -> torch.Tensor:
    """bool: pixels within Euclidean distance `radius` of any of `points`."""
    r = int(radius)
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    disk = (offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2 <= radius ** 2).float()
    return F.conv2d(points.float(), disk.view(1, 1, *disk.shape), padding=r) > 0


def boundary_f_score(predicted: torch.Tensor, truth: torch.Tensor, tolerance: float = 2.0
                     ) -> BoundaryScore:
    """Contour precision, recall and F per image, matching within `tolerance` pixels."""
    pc, tc = contour_pixels(predicted), contour_pixels(truth)
    precision = _ratio((pc & _within(tc, tolerance)).flatten(1).sum(1), pc.flatten(1).sum(1))
    recall = _ratio((tc & _within(pc, tolerance)).flatten(1).sum(1), tc.flatten(1).sum(1))
    total = precision + recall
    f_score = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12),
                          torch.zeros_like(total))
    return BoundaryScore(precision, recall, f_score)
