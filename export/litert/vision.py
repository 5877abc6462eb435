"""Vision models to LiteRT (litert-torch), run by ai-edge-litert in a child process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from export.errors import require


def write_litert_vision(wrapped: torch.nn.Module, example: torch.Tensor, out: Path,
                        meta: dict) -> None:
    litert_torch = require("litert_torch", "litert", "LiteRT export")
    litert_torch.convert(wrapped, (example,)).export(os.fspath(out))
    from export.litert.compact import shorten_tensor_names

    shorten_tensor_names(out)  # module-path names: a third of a small CNN's file


def run_litert_vision(path: Path, example: torch.Tensor) -> list[np.ndarray]:
    from export.litert.run_model import run_in_child

    return run_in_child(path, [example.numpy()])
