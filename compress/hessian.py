"""The inverse-Hessian factor SparseGPT (arXiv 2301.00774) and GPTQ (arXiv 2210.17323)
both build from H = sum_t x_t x_t^T of one linear layer:

    U = chol((H + lambda * mean(diag H) * I)^-1)   (upper),  lambda = dampening

Dead inputs (H_jj = 0: the feature was always 0) get H_jj = 1 and their weights set to
0, since no calibration token can tell what such a weight does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from compress.errors import CompressError
from compress.linalg import all_threads

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
                           name: str = "", *,
                           rebuild: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """U above (fp32), raising the dampening x10 up to DAMPENING_RETRIES times when H is not
    positive definite; `alternative` names a method that needs no Hessian, for the error.

    U is computed without forming (H + damp I)^-1. With P the exchange matrix (P x reverses
    x) and L the lower Cholesky factor of P (H + damp I) P,

        U = P L^-1 P

    because (H + damp I)^-1 = P L^-T L^-1 P = (P L^-1 P)^T (P L^-1 P) and P L^-1 P is upper
    triangular with a positive diagonal, so it is the (unique) upper Cholesky factor of the
    inverse. One Cholesky and one triangular inverse (n^3/3 flops each) replace a Cholesky,
    an n-column solve and a second Cholesky (~4x the flops), and the work happens in place
    in two n x n fp64 matrices besides `h`: a 7B model's 11008-input down_proj then needs
    3 GB here instead of 6, which is what keeps streaming GPTQ/SparseGPT within the memory
    bound. The factorisation runs on every thread (compress.linalg.all_threads).

    With `rebuild`, `h` is consumed: it is reversed and factorised in place (one n x n
    matrix less), and `rebuild()` gives H again should a retry with more dampening be
    needed."""
    n = h.shape[0]
    mean_diag = torch.diagonal(h).mean()
    info = torch.empty((), dtype=torch.int32, device=h.device)
    for attempt in range(DAMPENING_RETRIES + 1):
        damp = dampening * 10.0**attempt
        with all_threads():
            if rebuild is None:
                work = h.flip(0, 1)  # a copy: P H P
            else:
                work = h if attempt == 0 else rebuild()
                reverse_in_place(work)
            work.diagonal().add_(damp * mean_diag)  # P I P = I
            torch.linalg.cholesky_ex(work, out=(work, info))  # L in the lower triangle
            if int(info) == 0:
                inverse = torch.eye(n, dtype=h.dtype, device=h.device)
                torch.linalg.solve_triangular(work, inverse, upper=False, out=inverse)
                del work
                upper = inverse.to(torch.float32)
                del inverse
                upper = upper.flip(0, 1)
                if torch.isfinite(upper).all():
                    if attempt:
                        warnings.warn(
                            f"{_prefix(name)}the Hessian needed dampening {damp:g} (asked "
                            f"{dampening:g}) to be positive definite; more calibration "
                            "tokens would help", stacklevel=3)
                    return upper
            del work
    raise CompressError(
        f"{_prefix(name)}the calibration Hessian is not positive definite even with dampening "
        f"{damp:g}: use more calibration samples, another method (e.g. {alternative}), "
        "or leave the layer uncompressed with --ignore")


def reverse_in_place(m: torch.Tensor, rows: int = 256) -> None:
    """m <- P m P (rows and columns in reverse order) for a square m, `rows` rows at a time,
    so the temporary memory is 4 x rows x n instead of a second n x n matrix."""
    n = m.shape[0]
    for start in range(0, n // 2, rows):
        end = min(start + rows, n // 2)
        top, bottom = m[start:end].clone(), m[n - end:n - start].clone()
        m[start:end] = bottom.flip(0, 1)
        m[n - end:n - start] = top.flip(0, 1)
    if n % 2:
        m[n // 2] = m[n // 2].flip(0)


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
