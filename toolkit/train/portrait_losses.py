"""Boundary-sensitive training targets and losses (Du et al., arXiv 1712.08675), as pure
tensor functions.

Individual boundary-sensitive kernel (soft labels over background, foreground, boundary):
    d(p) = chessboard distance to the other class (toolkit/data/portraits/boundary.py)
    b(p) = max(0, (w + 1 - d(p)) / (w + 1))            w = band width, pixels per side
    y(p) = ((1 - m(p)) (1 - b(p)),  m(p) (1 - b(p)),  b(p))    sums to 1
so a pixel touching the contour is w/(w+1) boundary, the weight falls linearly to
1/(w+1) at depth w and is 0 beyond; the rest stays on the pixel's own side, which is
why p_fg + p_boundary / 2 (the deployed map) is above 0.5 exactly inside.

Global boundary-sensitive kernel (a position prior from the mean training mask):
    m_bar = mean_i m_i,   W = 1 + (1 - |2 m_bar - 1|)          in [1, 2]
Pixels where people sometimes are and sometimes are not (m_bar near 0.5: shoulders,
hair) weigh up to 2x; the paper's exact weighting was not found, and 1 + keeps pixels
that are always background from dropping out of the loss.

Loss:   L = sum_p W(p) sum_c a_c y_c(p) (-log softmax(l(p))_c) / sum_p W(p)
            + lambda * CE(attribute logits, hair style)      (unknown styles skipped)
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from toolkit.data.portraits.boundary import contour_distance
from toolkit.data.portraits.dataset import UNKNOWN_ATTRIBUTE


def soft_boundary_labels(masks: torch.Tensor, width: int) -> torch.Tensor:
    """float [N, 3, H, W] soft labels (background, foreground, boundary) from masks
    [N, 1, H, W]; a band `width` pixels deep on each side of the contour."""
    person = (masks != 0).float()
    distance = contour_distance(masks, width).float()
    boundary = ((width + 1 - distance) / (width + 1)).clamp(min=0)
    return torch.cat([(1 - person) * (1 - boundary), person * (1 - boundary), boundary],
                     dim=1)


def prior_weight_map(masks: torch.Tensor) -> torch.Tensor:
    """float [1, 1, H, W]: W = 1 + (1 - |2 m_bar - 1|) from training masks [N, 1, H, W]."""
    mean = (masks != 0).float().mean(dim=0, keepdim=True)
    return 2 - (2 * mean - 1).abs()


def boundary_sensitive_loss(logits: torch.Tensor, soft_labels: torch.Tensor,
                            weight_map: torch.Tensor | None = None,
                            class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-target 3-class cross-entropy, weighted per pixel by `weight_map` (broadcast
    to [N, 1, H, W]; None = 1) and per class by `class_weights` [3] (None = 1),
    normalised by the sum of the pixel weights."""
    per_class = -soft_labels * F.log_softmax(logits, dim=1)
    if class_weights is not None:
        per_class = per_class * class_weights.view(1, -1, 1, 1).to(per_class)
    per_pixel = per_class.sum(dim=1, keepdim=True)
    if weight_map is None:
        return per_pixel.mean()
    weights = weight_map.to(per_pixel).expand_as(per_pixel)
    return (per_pixel * weights).sum() / weights.sum()


def attribute_loss(attribute_logits: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the hair-style head over the images whose style is known; 0 (with
    a gradient path) when none is."""
    if bool((attributes == UNKNOWN_ATTRIBUTE).all()):
        return attribute_logits.sum() * 0
    return F.cross_entropy(attribute_logits, attributes, ignore_index=UNKNOWN_ATTRIBUTE)


def portrait_loss(logits: torch.Tensor, attribute_logits: torch.Tensor,
                  soft_labels: torch.Tensor, weight_map: torch.Tensor | None,
                  attributes: torch.Tensor, attribute_weight: float
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, its parts as floats for logging)."""
    segmentation = boundary_sensitive_loss(logits, soft_labels, weight_map)
    attribute = attribute_loss(attribute_logits, attributes)
    total = segmentation + attribute_weight * attribute
    return total, {"segmentation": float(segmentation.detach()),
                   "attribute": float(attribute.detach())}
