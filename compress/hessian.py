"""The inverse-Hessian factor SparseGPT (arXiv 2301.00774) and GPTQ (arXiv 2210.17323)
both build from H = sum_t x_t x_t^T of one linear layer:

    U = chol((H + lambda * mean(diag H) * I)^-1)   (upper),  lambda = dampening

Dead inputs (H_jj = 0: the feature was always 0) get H_jj = 1 and their weights set to
0, since no calibration token can tell what such a weight does.
"""

from __future__ import annotations

import math
import warnings

import torch

from compress.errors import CompressError
from compress.linalg import inverse_from_cholesky

# When Cholesky fails, retry with the dampening x10 this many times before giving up:
# 1% -> 10% -> 100% -> 1000% of mean(diag H); beyond that the update is meaningless.
DAMPENING_RETRIES = 3


def prepare_hessian(hessian: torch.Tensor, weight: torch.Tensor, name: str = "") -> torch.Tensor:
    """H in fp64 with dead inputs repaired; zeroes `weight[:, dead]` in place. `name`
    prefixes errors when the caller does not add the layer name itself."""
    h = hessian.detach().to(weight.device, torch.float64).clone()
    if not torch.isfinite(h).all():
        raise CompressError(
            f"{_prefix(name)}the calibration Hessian holds inf/NaN: the calibration inputs "
            "overflowed; calibrate in fp32 or leave the layer uncompressed with --ignore")
    dead = torch.nonzero(torch.diagonal(h) == 0).squeeze(1)
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    return h


def inverse_hessian_factor(h: torch.Tensor, dampening: float, alternative: str,
                           name: str = "") -> torch.Tensor:
    """U above (fp32), raising the dampening x10 up to DAMPENING_RETRIES times when H is not
    positive definite; `alternative` names a method that needs no Hessian, for the error."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = torch.diagonal(h).mean()
    for attempt in range(DAMPENING_RETRIES + 1):
        damp = dampening * 10.0**attempt
        lower, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if info == 0:
            upper, info = torch.linalg.cholesky_ex(inverse_from_cholesky(lower), upper=True)
            if info == 0 and torch.isfinite(upper).all():
                if attempt:
                    warnings.warn(f"{_prefix(name)}the Hessian needed dampening {damp:g} (asked "
                                  f"{dampening:g}) to be positive definite; more calibration "
                                  "tokens would help", stacklevel=3)
                return upper.to(torch.float32)
    raise CompressError(
        f"{_prefix(name)}the calibration Hessian is not positive definite even with dampening "
        f"{damp:g}: use more calibration samples, another method (e.g. {alternative}), "
        "or leave the layer uncompressed with --ignore")


def _prefix(name: str) -> str:
    return f"{name}: " if name else ""


def check_lazy_batch_knobs(block_size: object, dampening: object) -> float:
    """Validate the knobs SparseGPT and GPTQ share; returns the dampening as a float."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise CompressError(
            f"block_size {block_size!r} must be a positive integer (the paper uses 128)")
    if isinstance(dampening, bool) or not isinstance(dampening, int | float) \
            or not math.isfinite(dampening) or dampening <= 0:
        raise CompressError(
            f"dampening {dampening!r} must be a number > 0 (the paper uses 0.01)")
    return float(dampening)
