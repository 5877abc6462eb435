"""Importance of the hidden (expansion) channels of one inverted residual: a score per
channel, higher = more important = keep. Pure functions over tensors, so a test can call
them on hand-made numbers; collecting the tensors is compress/structured/collect.py's job.

Hidden channel j of a block passes, last, through the depthwise norm
    z_j = gamma_j * xhat_j + beta_j,   xhat_j = (u_j - mu_j) / sqrt(var_j + eps)
and a_j = ReLU6(z_j) is what the project conv reads. Removing j is the same as setting
gamma_j = beta_j = 0 (then z_j = 0 and a_j = ReLU6(0) = 0). That is why the norm-based
criterion reads the depthwise norm, and why the surgery is exact for such channels.

    bn-scale   |gamma_j|                                        (arXiv 1708.06519)
    l1-filter  sum_i |W_exp[j, i]|                              (arXiv 1608.08710)
    taylor     sum_b (sum_p a_j(p) dL_b/da_j(p))^2              (arXiv 1906.10771)
               [= sum_b (gamma_j dL_b/dgamma_j + beta_j dL_b/dbeta_j)^2 while no
               pixel saturates ReLU6; see bn_gate_gradients]
    random     U(0, 1), seeded (the control)
"""

from __future__ import annotations

import torch

from compress.errors import CompressError

# Criteria whose scores compare across blocks as they are: a norm scale is on one scale
# everywhere (network slimming ranks all of them globally), and the Taylor score
# estimates the change of one loss. L1 filter norms grow with the block's fan-in, so a
# global ranking first divides them by their block's mean (compress/structured/allocation.py).
GLOBALLY_COMPARABLE = frozenset({"bn-scale", "taylor", "random"})


def bn_scale_scores(gamma: torch.Tensor) -> torch.Tensor:
    """|gamma_j|: the norm's scaling factor, Liu et al., "Learning Efficient
    Convolutional Networks through Network Slimming" (arXiv 1708.06519). A channel whose
    scale is near 0 passes (almost) only its shift beta_j, a constant the next layer
    could absorb; the paper trains with an L1 penalty on gamma to make many such."""
    return gamma.detach().abs().float()


def l1_filter_scores(weight: torch.Tensor) -> torch.Tensor:
    """s_j = sum_{i,u,v} |W[j, i, u, v]|: the L1 norm of the filter that produces output
    channel j, Li et al., "Pruning Filters for Efficient ConvNets" (arXiv 1608.08710).
    For an inverted residual, W is the expand conv [hidden, in, 1, 1]: a small filter
    makes a weak channel before the norm rescales it (the paper ranks within a layer)."""
    if weight.ndim < 2:
        raise CompressError(f"l1-filter needs a conv weight [out, in, ...], got shape "
                            f"{tuple(weight.shape)}")
    return weight.detach().abs().flatten(1).sum(dim=1).float()


def taylor_scores(gate_gradients: torch.Tensor) -> torch.Tensor:
    """s_j = sum_b (dL_b/dm_j)^2 at m = 1, b over calibration batches: Molchanov et al.,
    "Importance Estimation for Neural Network Pruning" (arXiv 1906.10771), first-order
    Taylor on a gate m_j that multiplies channel j. Removing j sets m_j = 0 and changes
    the loss by about -dL/dm_j; the paper squares it per minibatch and accumulates.

    The gate here sits on a_j = ReLU6(z_j), the project conv's input, so
    dL/dm_j = sum_p a_j(p) dL/da_j(p): activation times gradient. `gate_gradients`:
    [B, C], one row per batch (compress/structured/collect.py)."""
    if gate_gradients.ndim != 2:
        raise CompressError(f"taylor needs gate gradients [batches, channels], got shape "
                            f"{tuple(gate_gradients.shape)}")
    return gate_gradients.double().pow(2).sum(dim=0).float()


def bn_gate_gradients(gamma: torch.Tensor, beta: torch.Tensor, grad_gamma: torch.Tensor,
                      grad_beta: torch.Tensor) -> torch.Tensor:
    """gamma_j dL/dgamma_j + beta_j dL/dbeta_j, [B, C]: the paper's gate gradient for a
    gate right after the norm (arXiv 1906.10771, eq. for BN-gated channels), since in
    eval mode z = gamma xhat + beta makes it sum_p z_j(p) dL/dz_j(p).

    Not what `taylor` uses: before ReLU6, a channel saturated at 6 has dL/dz = 0 and
    scores 0, yet it adds the constant 6 W_proj[:, j] and removing it changes the
    output; after ReLU6 (the gate `taylor_scores` reads) it scores what it carries.
    Both agree for channels that stay in (0, 6)."""
    return gamma.detach().double() * grad_gamma.double() + \
        beta.detach().double() * grad_beta.double()


def random_scores(channels: int, seed: int) -> torch.Tensor:
    """U(0, 1) per channel from a generator seeded with `seed`: the control a criterion
    must beat to mean anything."""
    return torch.rand(channels, generator=torch.Generator().manual_seed(seed))
