"""Input statistics of one linear layer, accumulated over calibration tokens by the engine.

Statistics are always accumulated in fp32, whatever dtype the forward pass runs in, so a
bf16 calibration forward changes the activations slightly but never the accumulation.
"""

from __future__ import annotations

import dataclasses

import torch

SQ_NORM = "sq_norm"  # sum_t x_tj^2 per input feature j: Wanda's ||X_j||_2 squared
HESSIAN = "hessian"  # sum_t x_t x_t^T: SparseGPT's / GPTQ's H = 2 X X^T up to the factor 2
ABS_SUM = "abs_sum"  # sum_t |x_tj| per input feature j: AWQ's activation magnitude
KNOWN_STATS = frozenset({SQ_NORM, HESSIAN, ABS_SUM})


@dataclasses.dataclass
class LinearStats:
    """What the calibration tokens looked like at one linear layer's input (fp32).

    `sq_norm[j] = sum_t x_tj^2`, `hessian = sum_t x_t x_t^T` and `abs_sum[j] = sum_t |x_tj|`
    over all `n_tokens` calibration tokens; each is None when no method asked for it.
    """

    in_features: int
    n_tokens: int = 0
    sq_norm: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    abs_sum: torch.Tensor | None = None

    @classmethod
    def empty(cls, in_features: int, wanted: frozenset[str], device: torch.device) -> LinearStats:
        stats = cls(in_features=in_features)
        if SQ_NORM in wanted:
            stats.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)
        if HESSIAN in wanted:
            stats.hessian = torch.zeros(
                in_features, in_features, dtype=torch.float32, device=device
            )
        if ABS_SUM in wanted:
            stats.abs_sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        return stats

    def add(self, inputs: torch.Tensor) -> None:
        """Accumulate a batch of layer inputs of shape [..., in_features]."""
        x = inputs.detach().reshape(-1, self.in_features).to(torch.float32)
        self.n_tokens += x.shape[0]
        if self.sq_norm is not None:
            self.sq_norm += x.square().sum(dim=0)
        if self.hessian is not None:
            self.hessian.addmm_(x.T, x)
        if self.abs_sum is not None:
            self.abs_sum += x.abs().sum(dim=0)

    def input_norm(self) -> torch.Tensor:
        """Wanda's ||X_j||_2 over all calibration tokens, shape [in_features]."""
        if self.sq_norm is None:
            raise RuntimeError("sq_norm was not collected for this layer")
        return self.sq_norm.sqrt()

    def mean_abs(self) -> torch.Tensor:
        """AWQ's mean_t |x_tj| over all calibration tokens, shape [in_features].

        Zero (not NaN) before any token was seen, so a caller never divides by zero."""
        if self.abs_sum is None:
            raise RuntimeError("abs_sum was not collected for this layer")
        return self.abs_sum / max(self.n_tokens, 1)
