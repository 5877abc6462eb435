"""Refuse models whose weights hold NaN or Inf: every later number would be meaningless."""

from __future__ import annotations

import torch
from torch import nn

from models.errors import ModelError


def check_finite_weights(module: nn.Module, source: str) -> None:
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelError(
                f"{source}: weight {name!r} holds {bad} NaN/Inf values: fix or re-export the "
                "checkpoint (a diverged training run or a broken conversion writes these)"
            )
