"""`compress.apply(model, config, calib)`: dispatch a method config to its handler."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.config import MethodConfig, handler_for


def apply(model: nn.Module, config: MethodConfig, calib: torch.Tensor | None,
          **options: Any) -> Any:
    """Compress `model` in place with `config`; `calib` is [N, L] token ids (or None for
    data-free methods). Options (device, forward_dtype, batch_size, progress) go to the
    handler. Returns the handler's report."""
    return handler_for(config)(model, config, calib, **options)
