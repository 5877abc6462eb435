"""Checks on weights read from a file: finite values (NaN/Inf make every later number
meaningless) and a state dict that fits the module its config builds."""

from __future__ import annotations

from pathlib import Path

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


def check_state_matches(path: Path, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor the config's module has, with its shape, and nothing else."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{name} {tuple(state[name].shape)} != {shape}" for name, shape in
             expected.items() if name in state and tuple(state[name].shape) != shape]
    if missing or unexpected or wrong:
        raise ModelError(f"{path} does not match its config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shapes {wrong[:2]}): re-create "
                         "the artifact")
