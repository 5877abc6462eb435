"""Boundary-sensitive labels and losses (toolkit/train/portrait_losses.py) and portrait
metrics (toolkit/eval/portrait_metrics.py), each against numbers worked out by hand on
tiny masks."""

from __future__ import annotations

import math

import pytest
import torch

from models.portrait import foreground_probability
from toolkit.data.portraits.boundary import boundary_band, contour_distance
from toolkit.eval.portrait_metrics import (
    band_iou,
    boundary_f_score,
    contour_pixels,
    mean_iou,
)
from toolkit.train.portrait_losses import (
    attribute_loss,
    boundary_sensitive_loss,
    portrait_loss,
    prior_weight_map,
    soft_boundary_labels,
)


def square(size=40, low=10, high=30):
    mask = torch.zeros(1, 1, size, size, dtype=torch.uint8)
    mask[..., low:high, low:high] = 1
    return mask


def test_contour_distance_of_one_pixel_by_hand():
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 3, 3] = 1
    d = contour_distance(mask, 2)[0, 0]
    assert d[3, 3] == 1  # the person pixel touches background
    assert d[2, 2] == 1 and d[3, 4] == 1  # 8-neighbours of the person pixel
    assert d[1, 3] == 2 and d[5, 5] == 2 and d[0, 0] == 3  # capped at 2 + 1


def test_soft_labels_on_a_square_band_and_values():
    labels = soft_boundary_labels(square(), width=3)[0]
    assert labels.shape == (3, 40, 40)
    torch.testing.assert_close(labels.sum(dim=0), torch.ones(40, 40))
    band = labels[2] > 0
    # 3 pixels deep on each side: the 20x20 square minus its 14x14 core inside (204),
    # the 26x26 square around it minus the 20x20 square outside (276).
    assert int(band[10:30, 10:30].sum()) == 20 * 20 - 14 * 14
    assert int(band.sum()) - int(band[10:30, 10:30].sum()) == 26 * 26 - 20 * 20
    assert torch.equal(band, boundary_band(square(), 3)[0, 0])
    # (bg, fg, boundary) at depth d: the boundary share is (3 + 1 - d) / 4.
    expected = {(20, 10): (0, 1 / 4, 3 / 4), (20, 12): (0, 3 / 4, 1 / 4),
                (20, 13): (0, 1, 0), (20, 9): (1 / 4, 0, 3 / 4), (9, 9): (1 / 4, 0, 3 / 4),
                (20, 7): (3 / 4, 0, 1 / 4), (20, 6): (1, 0, 0), (0, 0): (1, 0, 0)}
    for (row, column), value in expected.items():
        torch.testing.assert_close(labels[:, row, column], torch.tensor(value, dtype=torch.float),
                                   msg=f"pixel {(row, column)}")


def test_ideal_soft_labels_decode_to_the_mask():
    # A network predicting the soft labels exactly deploys p_fg + p_b / 2: above 0.5
    # exactly on the person, so the deployed map thresholds back to the mask.
    mask = square()
    labels = soft_boundary_labels(mask, width=4)
    probability = foreground_probability(torch.log(labels.clamp(min=1e-12)))
    assert torch.equal(probability > 0.5, mask.bool())


def test_prior_weight_map_from_known_masks():
    masks = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [1, 0]], [[1, 1], [0, 0]],
                          [[1, 0], [0, 0]]]).view(4, 1, 2, 2)
    # mean masks [[1, 1/2], [1/4, 0]] -> 1 + (1 - |2m - 1|) = [[1, 2], [1.5, 1]]
    torch.testing.assert_close(prior_weight_map(masks),
                               torch.tensor([[1.0, 2.0], [1.5, 1.0]]).view(1, 1, 2, 2))


def test_weighted_soft_cross_entropy_by_hand():
    # Two pixels. Pixel 1: logits (0, 0, 0), target (0, 1/2, 1/2) -> log 3.
    # Pixel 2: logits (2, 0, 0), target (1, 0, 0) -> -log(e^2 / (e^2 + 2)).
    logits = torch.tensor([[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]]).view(1, 3, 1, 2)
    target = torch.tensor([[0.0, 1.0], [0.5, 0.0], [0.5, 0.0]]).view(1, 3, 1, 2)
    first, second = math.log(3), -math.log(math.exp(2) / (math.exp(2) + 2))
    plain = boundary_sensitive_loss(logits, target)
    assert float(plain) == pytest.approx((first + second) / 2, rel=1e-6)
    weights = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    weighted = boundary_sensitive_loss(logits, target, weights)
    assert float(weighted) == pytest.approx((first + 3 * second) / 4, rel=1e-6)
    classes = boundary_sensitive_loss(logits, target, None, torch.tensor([1.0, 1.0, 2.0]))
    # The boundary class (half of pixel 1's target) counts twice.
    assert float(classes) == pytest.approx((1.5 * first + second) / 2, rel=1e-6)


def test_attribute_loss_skips_unknown_styles():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = attribute_loss(logits, torch.tensor([0, -1]))
    by_hand = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert float(loss.detach()) == pytest.approx(by_hand, rel=1e-6)
    none = attribute_loss(logits, torch.tensor([-1, -1]))
    none.backward()
    assert float(none.detach()) == 0 and torch.isfinite(logits.grad).all()


def test_portrait_loss_adds_the_weighted_attribute_loss():
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = soft_boundary_labels(square(4, 1, 3).repeat(2, 1, 1, 1), 1)
    attributes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    total, parts = portrait_loss(logits, attributes, labels, None, torch.tensor([0, 1]), 0.5)
    assert float(total) == pytest.approx(parts["segmentation"] + 0.5 * parts["attribute"])


# --- metrics ----------------------------------------------------------------------------

def grid(rows):
    return torch.tensor(rows, dtype=torch.uint8).view(1, 1, len(rows), len(rows[0]))


TRUTH = grid([[0, 0, 0, 0],
              [0, 1, 1, 0],
              [0, 1, 1, 0],
              [0, 0, 0, 0]])
PREDICTED = grid([[0, 0, 0, 0],
                  [0, 1, 1, 1],
                  [0, 1, 0, 0],
                  [0, 0, 0, 0]])


def test_mean_iou_by_hand():
    # Person: intersection 3, union 5 -> 3/5. Background: 11 and 13 -> 11/13.
    assert float(mean_iou(PREDICTED, TRUTH)[0]) == pytest.approx((3 / 5 + 11 / 13) / 2)
    assert float(mean_iou(TRUTH, TRUTH)[0]) == 1
    empty = torch.zeros_like(TRUTH)
    assert float(mean_iou(empty, empty)[0]) == 1  # no person anywhere: 1 and 1


def test_band_iou_by_hand():
    # Width 1 around the 2x2 square: every pixel of the 4x4 image is in the band, so
    # the band mIoU is the mIoU. On a 6x6 image the outer ring drops out of the band.
    assert float(band_iou(PREDICTED, TRUTH, 1)[0]) == pytest.approx((3 / 5 + 11 / 13) / 2)
    truth = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    truth[..., 2:4, 2:4] = 1
    predicted = torch.zeros_like(truth)
    predicted[..., 2:4, 2:4] = 1
    predicted[..., 0, 0] = 1  # an error outside the band does not count
    predicted[..., 1, 1] = 1  # one inside it does
    # Band: the 4x4 block rows/columns 1..4 (16 pixels). Person 4/5, background 11/12.
    assert float(band_iou(predicted, truth, 1)[0]) == pytest.approx((4 / 5 + 11 / 12) / 2)
    assert float(mean_iou(predicted, truth)[0]) == pytest.approx((4 / 6 + 30 / 32) / 2)


def test_contour_pixels_by_hand():
    assert torch.equal(contour_pixels(TRUTH), TRUTH.bool())  # all four touch background
    block = torch.ones(1, 1, 3, 3)
    assert not contour_pixels(block).any()  # the image border is not a contour
    hole = torch.ones(1, 1, 3, 3)
    hole[..., 1, 1] = 0
    assert int(contour_pixels(hole).sum()) == 4  # the 4-neighbours of the hole


def test_boundary_f_score_by_hand():
    # Contours: truth {(1,1),(1,2),(2,1),(2,2)}; predicted {(1,1),(1,2),(1,3),(2,1)}.
    exact = boundary_f_score(PREDICTED, TRUTH, tolerance=0)
    assert float(exact.precision[0]) == pytest.approx(3 / 4)  # (1,3) unmatched
    assert float(exact.recall[0]) == pytest.approx(3 / 4)  # (2,2) unmatched
    assert float(exact.f_score[0]) == pytest.approx(3 / 4)
    near = boundary_f_score(PREDICTED, TRUTH, tolerance=1)  # (1,3)-(1,2), (2,2)-(2,1)
    assert float(near.f_score[0]) == 1
    # Shift the 2x2 square by 2 columns: with tolerance 1 only the columns next to each
    # other match: half of each contour.
    shifted = torch.zeros(1, 1, 4, 6, dtype=torch.uint8)
    shifted[..., 1:3, 3:5] = 1
    truth = torch.zeros(1, 1, 4, 6, dtype=torch.uint8)
    truth[..., 1:3, 1:3] = 1
    score = boundary_f_score(shifted, truth, tolerance=1)
    assert float(score.precision[0]) == pytest.approx(1 / 2)
    assert float(score.f_score[0]) == pytest.approx(1 / 2)
    nothing = boundary_f_score(torch.zeros_like(truth), truth, tolerance=2)
    assert float(nothing.precision[0]) == 1 and float(nothing.recall[0]) == 0
    assert float(nothing.f_score[0]) == 0
