"""Perplexity over fixed token windows.

    ppl = exp( sum_w sum_{t=1}^{L-1} -log p(x_{w,t} | x_{w,<t}) / (K * (L - 1)) )

over K non-overlapping windows of L tokens; each window starts a fresh context, so the
first token of a window is never predicted. The log-softmax is taken in fp32 and the sum
in fp64 so that the number does not depend on the batch size. Each window's own mean NLL
is kept too (`window_nll`), for bootstrap intervals over windows (toolkit.eval.intervals).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class PerplexityResult:
    ppl: float
    mean_nll: float  # nats per predicted token
    tokens: int  # predicted tokens
    windows: int
    seq_len: int
    # Mean NLL (nats per predicted token) of each window, in window order. Every window
    # predicts seq_len - 1 tokens, so mean(window_nll) == mean_nll up to rounding.
    window_nll: list[float] = dataclasses.field(default_factory=list)

    def to_dict(self, *, include_windows: bool = False) -> dict:
        """The scalar fields (what manifests record); `include_windows` adds `window_nll`."""
        data = dataclasses.asdict(self)
        if not include_windows:
            del data["window_nll"]
        return data


def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 1,
               device: str | torch.device = "cpu",
               progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
    """Perplexity of `model` on `windows` ([K, L] token ids)."""
    device = torch.device(device)
    total_nll = 0.0
    predicted = 0
    window_nll: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
            target = batch[:, 1:].unsqueeze(-1)
            token_log_probs = log_probs.gather(-1, target)
            total_nll -= float(token_log_probs.sum(dtype=torch.float64))
            per_window = token_log_probs.squeeze(-1).sum(dim=-1, dtype=torch.float64)
            window_nll.extend((-per_window / target.shape[1]).tolist())
            predicted += target.numel()
            if progress:
                progress(min(start + batch_size, windows.shape[0]), windows.shape[0])
    mean_nll = total_nll / predicted
    return PerplexityResult(math.exp(mean_nll), mean_nll, predicted, windows.shape[0],
                            windows.shape[1], window_nll)
