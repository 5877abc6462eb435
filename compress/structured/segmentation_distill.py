"""Recovery of a pruned segmenter by distillation from the unpruned one (Hinton et al.,
arXiv 1503.02531), pixel by pixel over its 3-class (background, foreground, boundary)
logits:

    L = alpha * T^2 * mean_p KL(softmax(z_t(p) / T) || softmax(z_s(p) / T))
        + (1 - alpha) * mean_p -sum_c y_c(p) log softmax(z_s(p))_c     (labels given)

p runs over every pixel of every image; y are soft labels [N, 3, H, W] (the
boundary-sensitive ones of toolkit/train/portrait_losses.py, built by the caller: compress
does not import toolkit). The loop is `compress.distill.distill`; the segmenter reaches it
through its `task_logits` (`compress.distill.task_forward`, class dim last) with the norms'
running statistics fixed (`compress.distill.FrozenNormStats`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from compress.distill import (
    DistillConfig,
    DistillReport,
    FrozenNormStats,
    distill,
    task_forward,
)
from compress.sweep import Progress


def segmentation_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] logits of a segmenter (its `task_logits`, models/channel_groups.py)."""
    return model.task_logits(images)


def task_loss(logits: torch.Tensor, soft_labels: torch.Tensor | None) -> torch.Tensor:
    """Pixel-mean cross-entropy of logits [N, 3, H, W] against soft labels [N, 3, H, W],
    or, without labels, against the model's own per-pixel argmax (a pseudo-label whose
    gradient says which weights the current prediction rests on)."""
    if soft_labels is None:
        return F.cross_entropy(logits.float(), logits.detach().argmax(dim=1))
    return -(soft_labels.to(logits) * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def distill_segmentation(student: nn.Module, teacher: nn.Module, images: torch.Tensor,
                         config: DistillConfig, *, soft_labels: torch.Tensor | None = None,
                         eval_images: torch.Tensor | None = None,
                         progress: Progress | None = None) -> DistillReport:
    """Train `student` in place towards `teacher` on `images` [N, 3, H, W] (normalised),
    with the task term when `soft_labels` [N, 3, H, W] are given and config.alpha < 1.
    The report's KLs are the per-pixel KL at T = 1 on `eval_images`."""
    labels = None if soft_labels is None else soft_labels.permute(0, 2, 3, 1)
    return distill(FrozenNormStats(student), teacher, images, config, labels=labels,
                   forward=task_forward, eval_batch=eval_images, progress=progress)
