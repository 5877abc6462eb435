"""SparseGPT: OBS mask choice w^2 / [H^-1]_jj^2 plus error feedback from H = X X^T.

SparseGPT (Frantar & Alistarh, arXiv 2301.00774) prunes a linear layer column by column.
Pruning weight w_rj adds the error (w_rj - q_rj) / [Hinv]_jj, which the still-unpruned
later columns of that row absorb through `W[:, j+1:] -= err_j * Hinv[j, j+1:]`, where
Hinv is the upper Cholesky factor of (H + damp I)^-1 (row j of it is the OBS update
direction restricted to the columns not yet processed). The reconstruction error
||W X - W' X|| is therefore much lower than Wanda's or magnitude's on correlated inputs.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from compress.hessian import check_lazy_batch_knobs, inverse_hessian_factor, prepare_hessian
from compress.linalg import lazy_update_threads, single_threaded
from compress.prune.base import PruneConfig, register_pruner
from compress.prune.masks import check_n_m, row_lowest_k_mask
from compress.stats import HESSIAN, LinearStats


@dataclasses.dataclass
class SparseGPTConfig(PruneConfig):
    """SparseGPT's knobs on top of the shared pruning ones; needs the full input Hessian."""

    method: ClassVar[str] = "sparsegpt"
    needs: ClassVar[frozenset[str]] = frozenset({HESSIAN})

    # Columns whose mask is chosen together and whose updates to the later columns are
    # applied as one matmul (lazy batch). The paper uses 128: smaller lets more of the
    # error feedback reach the mask choice, larger is faster. With N:M it is rounded
    # down to a multiple of M so no group straddles two blocks.
    block_size: int = 128
    # Fraction of mean(diag H) added to H's diagonal: makes H invertible when the
    # calibration tokens span fewer dimensions than the layer has inputs (paper: 1%).
    dampening: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dampening = check_lazy_batch_knobs(self.block_size, self.dampening)


def _inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, dampening: float,
                            name: str) -> torch.Tensor:
    def rebuild() -> torch.Tensor:  # H again, for a retry with more dampening
        return prepare_hessian(hessian, weight.clone(), name)

    return inverse_hessian_factor(prepare_hessian(hessian, weight, name), dampening, "wanda",
                                  name, rebuild=rebuild)


def _prune_block(
    w: torch.Tensor, hinv: torch.Tensor, i1: int, i2: int,
    sparsity: float, nm: tuple[int, int] | None,
) -> None:
    """Prune columns [i1, i2) of w in place with error feedback, then update columns i2:."""
    w1 = w[:, i1:i2].clone()
    h1 = hinv[i1:i2, i1:i2]
    d = torch.diagonal(h1)
    err1 = torch.zeros_like(w1)
    if nm is None:
        # Per-row counts that telescope to exactly round(sparsity * in) zeros per row.
        k = round(sparsity * i2) - round(sparsity * i1)
        mask1 = row_lowest_k_mask(w1.square() / d.square(), k)
    else:
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
    for i in range(i2 - i1):
        if nm is not None and i % nm[1] == 0:
            # The paper's choice: the group's mask sees the already updated weights.
            group = slice(i, i + nm[1])
            mask1[:, group] = row_lowest_k_mask(w1[:, group].square() / d[group].square(), nm[0])
        col = w1[:, i]
        q = col.masked_fill(mask1[:, i], 0.0)
        err = (col - q) / d[i]
        w1[:, i + 1:] -= err.unsqueeze(1) * h1[i, i + 1:].unsqueeze(0)
        w1[:, i] = q
        err1[:, i] = err
    w[:, i1:i2] = w1
    with lazy_update_threads(w, i2):
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    block_size: int = 128,
    dampening: float = 0.01,
    name: str = "layer",
) -> torch.Tensor:
    """OBS saliency w_rj^2 / [Hinv]_jj^2 and update W[:, j+1:] -= err_j Hinv[j, j+1:].

    SparseGPT, arXiv 2301.00774, with H = sum_t x_t x_t^T (the paper's 2 X X^T / n: the
    factor and the 1/n cancel, dampening being relative to mean(diag H)). Returns a new
    fp32 tensor; pruned entries are exactly 0. Two deliberate choices of the mask:

    (a) unstructured: chosen PER OUTPUT ROW (as Wanda does, where the paper compares a
        whole block). Row r gets round(s * i2) - round(s * i1) zeros in block [i1, i2), so
        every row ends with exactly round(s * in) zeros, as `unstructured_row_mask` gives.
    (b) N:M: at each column i with i % M == 0 the N lowest saliencies among columns
        i..i+M-1 are pruned, using the weights already updated by the earlier columns, as
        the paper does. `block_size` is rounded down to a multiple of M (at least M).

    Dead inputs (H_jj = 0) come out as zero columns, which count toward the zeros.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({cols}, {cols})")
    if nm is not None:
        check_n_m(cols, nm[0], nm[1], name)
        block_size = max(nm[1], block_size - block_size % nm[1])
    elif not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity {sparsity} is outside [0, 1]")
    w = weight.detach().to(torch.float32).clone()
    hinv = _inverse_hessian_factor(hessian, w, dampening, name)
    with single_threaded():
        for i1 in range(0, cols, block_size):
            _prune_block(w, hinv, i1, min(i1 + block_size, cols), sparsity, nm)
    return w


@register_pruner(SparseGPTConfig)
def prune_weight(
    weight: torch.Tensor,
    stats: LinearStats,
    sparsity: float,
    nm: tuple[int, int] | None,
    config: PruneConfig,
) -> torch.Tensor:
    """SparseGPT on one linear layer, with the config's block size and dampening."""
    if stats.hessian is None:
        raise RuntimeError("hessian was not collected for this layer")
    assert isinstance(config, SparseGPTConfig), type(config)
    return sparsegpt_prune(
        weight, stats.hessian, sparsity, nm, config.block_size, config.dampening
    )
