"""Training the boundary-sensitive portrait segmenter (Du et al., arXiv 1712.08675;
arXiv 1712.07168 is the companion portrait-segmentation study) on a PortraitSet.

Per batch of images x with masks m and hair styles s (toolkit/train/portrait_losses.py):
    y = soft_boundary_labels(m, w)                       3-class soft labels, band w
    W = 1 + (1 - |2 m_bar - 1|)                          m_bar = mean TRAINING mask
    L = sum_p W(p) sum_c y_c(p) (-log softmax(l(p))_c) / sum_p W(p)
        + lambda_attr * CE(a, s)  [+ extra_loss(outputs, x)]
AdamW, linear warm-up then cosine decay to 0, random horizontal flips (a mirrored
portrait is a portrait). `extra_loss` is the hook for a distillation term (a teacher's
soft masks), computed on the same normalised, flipped batch. Seeded: one seed gives the
same weights on the same machine and thread count.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch

from models.portrait import MEAN, STD, PortraitConfig, PortraitOutputs, PortraitSegmenter
from toolkit.data.portraits import PortraitSet
from toolkit.train.portrait_losses import portrait_loss, prior_weight_map, soft_boundary_labels

# (outputs of forward_train, normalised images) -> a scalar added to the loss.
ExtraLoss = Callable[[PortraitOutputs, torch.Tensor], torch.Tensor]
# (stage, done, total), as toolkit.progress.StageProgress takes it.
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class PortraitTrainSettings:
    epochs: int = 8
    # Small batches: at a fixed compute budget more updates trained better (batch 8 vs 16).
    batch_size: int = 8
    # AdamW peak rate; BN + a small network take a large one with a short warm-up
    # (6e-3 beat 3e-3 on held-out mIoU in the measured default run).
    lr: float = 6e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    # Soft-label band w, pixels each side of the contour (the boundary class's depth).
    band_width: int = 4
    # lambda_attr: the hair-style head is an auxiliary task; it should shape the
    # encoder's features, not dominate the mask loss.
    attribute_weight: float = 0.1
    # Random horizontal flips of the training images.
    flip: bool = True
    seed: int = 0
    # Intra-op threads during training (restored after); None = leave as is. A small
    # network's ops are too small to split well, and a seeded run repeats bit for bit
    # only at the same count.
    threads: int | None = 1

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.band_width < 1:
            raise ValueError(f"band_width must be at least 1 pixel, got {self.band_width}")
        if self.attribute_weight < 0 or self.weight_decay < 0:
            raise ValueError("attribute_weight and weight_decay must be >= 0")


def normalise_pixels(pixels: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """x' = (x / 255 - mean) / std per channel, raw pixels [N, 3, H, W] -> float."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels.float() / 255 - m) / s


def training_prior(masks: torch.Tensor, flip: bool) -> torch.Tensor:
    """The prior weight map of the training masks; with flips, of the masks and their
    mirrors (the masks the network actually sees), so W stays left-right symmetric."""
    weights = prior_weight_map(masks)
    return (weights + weights.flip(-1)) / 2 if flip else weights


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return factor


def train_portrait(config: PortraitConfig, train: PortraitSet, settings: PortraitTrainSettings,
                   *, model: PortraitSegmenter | None = None, extra_loss: ExtraLoss | None = None,
                   progress: Progress | None = None) -> tuple[PortraitSegmenter, dict]:
    """Train a fresh segmenter of `config` (or go on training `model`, e.g. a pruned one)
    on `train`; returns the model in eval mode and its history (mean loss and its parts
    per epoch, seconds)."""
    if tuple(train.images.shape[-2:]) != (config.height, config.width):
        raise ValueError(f"images are {tuple(train.images.shape[-2:])}, the model takes "
                         f"{config.height}x{config.width}")
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        torch.manual_seed(settings.seed)
        model = PortraitSegmenter(config) if model is None else model
        return model, _fit(model, train, settings, extra_loss, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(model: PortraitSegmenter, train: PortraitSet, settings: PortraitTrainSettings,
         extra_loss: ExtraLoss | None, progress: Progress | None) -> dict:
    count = len(train)
    steps_per_epoch = math.ceil(count / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, max(1, int(settings.warmup_fraction * total))))
    weight_map = training_prior(train.masks, settings.flip)
    generator = torch.Generator().manual_seed(settings.seed)
    epochs, start, step = [], time.perf_counter(), 0
    model.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(count, generator=generator)
        sums: dict[str, float] = {}
        for first in range(0, count, settings.batch_size):
            rows = order[first:first + settings.batch_size]
            parts = _step(model, train, rows, weight_map, settings, generator, extra_loss)
            optimizer.step()
            schedule.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * rows.numel()
            step += 1
            if progress is not None:
                progress("train", step, total)
        epochs.append({"epoch": epoch + 1, **{k: v / count for k, v in sums.items()}})
    model.eval()
    return {"epochs": epochs, "steps": total, "seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads()}


def _step(model: PortraitSegmenter, train: PortraitSet, rows: torch.Tensor,
          weight_map: torch.Tensor, settings: PortraitTrainSettings,
          generator: torch.Generator, extra_loss: ExtraLoss | None) -> dict[str, float]:
    """Forward and backward of one batch (gradients left for the optimizer)."""
    x, masks = normalise_pixels(train.images[rows]), train.masks[rows]
    if settings.flip:
        flip = (torch.rand(rows.numel(), generator=generator) < 0.5).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        masks = torch.where(flip, masks.flip(-1), masks)
    # Labels after the flip: the band follows the contour wherever it went.
    labels = soft_boundary_labels(masks, settings.band_width)
    outputs = model.forward_train(x)
    loss, parts = portrait_loss(outputs.logits, outputs.attributes, labels, weight_map,
                                train.attributes[rows], settings.attribute_weight)
    if extra_loss is not None:
        extra = extra_loss(outputs, x)
        loss = loss + extra
        parts["extra"] = float(extra.detach())
    parts["loss"] = float(loss.detach())
    model.zero_grad(set_to_none=True)
    loss.backward()
    return parts
