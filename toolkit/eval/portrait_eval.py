"""Evaluating a portrait segmenter on a PortraitSet, batch by batch (memory stays at one
batch of images and maps), with the metrics of toolkit/eval/portrait_metrics.py:

    predicted mask   P = [p_fg > threshold]        threshold 0.5 (the deployed rule)
    mIoU             mean over images of (IoU_person + IoU_background) / 2
    band mIoU        the same inside the truth's contour band of `band_width` pixels
                     each side, where boundary-sensitive training (arXiv 1712.08675)
                     should gain
    boundary F       DAVIS contour F within `tolerance` pixels (arXiv 1704.00675)
    attribute acc.   share of images with a known hair style whose argmax is right

The model is anything that takes normalised NCHW float images and returns either
PortraitOutputs (3-class logits + hair-style logits, as `forward_train` does; a
PortraitSegmenter is called that way) or a foreground probability map [N, 1, H, W]
(the deployed output, e.g. an exported file's runner); `preprocess` maps raw uint8
pixels to its input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.portrait import PortraitOutputs, PortraitSegmenter, foreground_probability
from toolkit.data.portraits import UNKNOWN_ATTRIBUTE, PortraitSet
from toolkit.eval.portrait_metrics import band_iou, boundary_f_score, mean_iou
from toolkit.train.portrait_trainer import normalise_pixels

# 4 px each side: about 1.5% of a 256 px side, the soft-label band's default depth,
# i.e. the pixels boundary-sensitive training targets.
DEFAULT_BAND_WIDTH = 4
DEFAULT_TOLERANCE = 2.0
THRESHOLD = 0.5
EVAL_BATCH = 16


@torch.no_grad()
def predict(model: Callable, pixels: torch.Tensor,
            preprocess: Callable[[torch.Tensor], torch.Tensor] = normalise_pixels
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(foreground probability [N, 1, H, W], hair-style logits [N, A] or None) of one batch
    of raw pixels."""
    x = preprocess(pixels)
    out = model.forward_train(x) if isinstance(model, PortraitSegmenter) else model(x)
    if isinstance(out, PortraitOutputs):
        return foreground_probability(out.logits), out.attributes
    out = torch.as_tensor(out)
    if out.dim() == 3:
        out = out.unsqueeze(1)
    if out.shape != (pixels.shape[0], 1, *pixels.shape[-2:]):
        raise ValueError(f"the model gave {tuple(out.shape)}; expected PortraitOutputs or a "
                         f"probability map {(pixels.shape[0], 1, *pixels.shape[-2:])}")
    return out, None


def score_masks(predicted: torch.Tensor, truth: torch.Tensor, band_width: int,
                tolerance: float) -> dict[str, torch.Tensor]:
    """Per-image metrics [N] of binary predicted vs true masks [N, 1, H, W]."""
    boundary = boundary_f_score(predicted, truth, tolerance)
    return {"miou": mean_iou(predicted, truth), "band_iou": band_iou(predicted, truth, band_width),
            "boundary_f": boundary.f_score, "boundary_precision": boundary.precision,
            "boundary_recall": boundary.recall}


def evaluate_portraits(model: Callable, data: PortraitSet, *,
                       band_width: int = DEFAULT_BAND_WIDTH,
                       tolerance: float = DEFAULT_TOLERANCE, threshold: float = THRESHOLD,
                       batch_size: int = EVAL_BATCH,
                       preprocess: Callable[[torch.Tensor], torch.Tensor] = normalise_pixels
                       ) -> dict:
    """Mean metrics over `data`; attribute accuracy is None when the model has no
    attribute head or no image has a known style."""
    if isinstance(model, torch.nn.Module):
        was_training = model.training
        model.eval()
    per_image: dict[str, list[torch.Tensor]] = {}
    correct = known = 0
    try:
        for first in range(0, len(data), batch_size):
            rows = slice(first, first + batch_size)
            probability, attributes = predict(model, data.images[rows], preprocess)
            predicted = (probability > threshold).to(torch.uint8)
            scores = score_masks(predicted, data.masks[rows], band_width, tolerance)
            for key, value in scores.items():
                per_image.setdefault(key, []).append(value)
            labels = data.attributes[rows]
            if attributes is not None:
                mask = labels != UNKNOWN_ATTRIBUTE
                known += int(mask.sum())
                correct += int((attributes.argmax(-1)[mask] == labels[mask]).sum())
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    metrics = {key: float(torch.cat(values).mean()) for key, values in per_image.items()}
    metrics["attribute_accuracy"] = correct / known if known else None
    metrics.update({"images": len(data), "band_width": band_width, "tolerance": tolerance,
                    "threshold": threshold, "data": data.source})
    return metrics


def prior_baseline(train_masks: torch.Tensor, test: PortraitSet, *,
                   band_width: int = DEFAULT_BAND_WIDTH,
                   tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """The trivial baseline: every test image gets the same mask, the mean training mask
    thresholded at 0.5 (where a person is more often than not). A model that learned
    nothing about the image scores about this."""
    prior = ((train_masks != 0).float().mean(0, keepdim=True) > THRESHOLD).to(torch.uint8)
    per_image: dict[str, list[torch.Tensor]] = {}
    for first in range(0, len(test), EVAL_BATCH):
        truth = test.masks[first:first + EVAL_BATCH]
        for key, value in score_masks(prior.expand_as(truth), truth, band_width,
                                      tolerance).items():
            per_image.setdefault(key, []).append(value)
    return {key: float(torch.cat(values).mean()) for key, values in per_image.items()}
