"""Recovery of a pruned segmenter by distillation from the unpruned one (Hinton et al.,
arXiv 1503.02531), pixel by pixel over its 3-class (background, foreground, boundary)
logits:

    L = alpha * T^2 * mean_p KL(softmax(z_t(p) / T) || softmax(z_s(p) / T))
        + (1 - alpha) * mean_p -sum_c y_c(p) log softmax(z_s(p))_c     (labels given)

p runs over every pixel of every image; y are soft labels [N, 3, H, W] (the
boundary-sensitive ones of toolkit/train/portrait_losses.py, built by the caller: compress
does not import toolkit). The loop is `compress.distill.distill`; this module adapts the
segmenter to it (class dim last) and keeps the norms' running statistics fixed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from compress.distill import DistillConfig, DistillReport, distill
from compress.sweep import Progress


def segmentation_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] training logits of a portrait segmenter (`forward_train`)."""
    return model.forward_train(images).logits


def channels_last_forward(model: nn.Module, images: Any) -> tuple[torch.Tensor, None]:
    """A `compress.distill` forward: logits [N, H, W, 3], so the KD loss (over the last
    dim, averaged over all leading ones) is the per-pixel KL averaged over pixels."""
    return segmentation_logits(model, images).permute(0, 2, 3, 1), None


def task_loss(logits: torch.Tensor, soft_labels: torch.Tensor | None) -> torch.Tensor:
    """Pixel-mean cross-entropy of logits [N, 3, H, W] against soft labels [N, 3, H, W],
    or, without labels, against the model's own per-pixel argmax (a pseudo-label whose
    gradient says which weights the current prediction rests on)."""
    if soft_labels is None:
        return F.cross_entropy(logits.float(), logits.detach().argmax(dim=1))
    return -(soft_labels.to(logits) * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


class FrozenNormStats(nn.Module):
    """The student seen through a wrapper whose train() leaves every batch norm in eval
    mode: a short recovery on batches of a few images would replace the running mean and
    variance the kept weights were fitted with by noisy batch estimates (and the teacher
    keeps its own); the norms' scale and shift still train."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> FrozenNormStats:
        super().train(mode)
        for norm in self.module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.eval()
        return self

    def forward_train(self, images: torch.Tensor):
        return self.module.forward_train(images)


def distill_segmentation(student: nn.Module, teacher: nn.Module, images: torch.Tensor,
                         config: DistillConfig, *, soft_labels: torch.Tensor | None = None,
                         eval_images: torch.Tensor | None = None,
                         progress: Progress | None = None) -> DistillReport:
    """Train `student` in place towards `teacher` on `images` [N, 3, H, W] (normalised),
    with the task term when `soft_labels` [N, 3, H, W] are given and config.alpha < 1.
    The report's KLs are the per-pixel KL at T = 1 on `eval_images`."""
    labels = None if soft_labels is None else soft_labels.permute(0, 2, 3, 1)
    return distill(FrozenNormStats(student), teacher, images, config, labels=labels,
                   forward=channels_last_forward, eval_batch=eval_images, progress=progress)
