"""A learned rotation: SpinQuant's optimisation of R1 and R2 (Liu et al., arXiv 2405.16406,
section 3) with the weight quantizer in the loop, for the `rotate` stage's `learn_steps`.

The seeded rotation (compress/rotate/rotate.py) is the starting point. On top of it this
learns one more orthogonal matrix of the hidden size, U, and (with head_rotation) one of
the head size per block, V_b, so that the model *after round-to-nearest quantization* of
its block linears stays close to the float model. The float model's function is the same
for every U and V_b (they are changes of basis, carried exactly as in rotate.py):

    embeddings E <- E U        readers W <- W U        writers W <- U^T W, b <- U^T b
    head        W <- W U       v_proj  W_h <- V^T W_h  o_proj  W[:, head] <- W[:, head] V

Parametrisation. U = exp(S - S^T) with S a free square matrix: the matrix exponential of a
skew-symmetric matrix is orthogonal, so every step stays on the orthogonal group without
SpinQuant's Cayley retraction, and S = 0 is the seeded rotation itself. Adam updates S.

Loss. KL(p_float || p_quant) of the next-token distributions on calibration windows (the
LoRA stage's distillation loss, compress/distill.kd_loss), where p_quant runs the rotated
weights fake-quantized on the grid the quantization stage uses (compress/quant/grid.py:
asymmetric, per group, min/max range with zero inside, integer zero point, fp16 scale).
Rounding passes the gradient straight through (STE): forward w_hat = Q(w), backward
d w_hat / d w = 1, as SpinQuant does. The float model is the teacher: the rotated model
before quantization computes the dense model's function.

The last `held_out` calibration windows are not trained on; the KL on them is measured
before and after, and the learned matrices are kept only when they lower it (otherwise the
seeded rotation stays and the report says so). SpinQuant then runs GPTQ on the learned
rotation; here that is the next stage of the recipe.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from compress.distill import kd_loss
from compress.distill_batches import shuffled_forever
from compress.errors import CompressError
from compress.quant.grid import (
    check_grid,
    dequantize_codes,
    expand_groups,
    group_params,
    quantize_to_codes,
)
from compress.sweep import Progress
from models.adapter import ResidualBlock


@dataclasses.dataclass
class LearnSettings:
    steps: int
    lr: float
    bits: int
    group_size: int
    held_out: int
    seed: int


@dataclasses.dataclass
class Site:
    """Where one weight reads or writes the residual stream."""

    name: str  # the parameter's qualified name in the model
    side: str  # "input" (W <- W U), "output" (W <- U^T W), "bias" (b <- U^T b),
    # "value" (per head: W_h <- V^T W_h), "value_bias", "heads_in" (W[:, h] <- W[:, h] V)
    block: int | None  # the block whose V applies (value / heads_in sides)
    quantized: bool  # fake-quantized in the loop (a block linear's weight)


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest of an [out, in] weight on compress/quant/grid.py's asymmetric grid,
    straight-through: the value is the dequantized weight, the gradient is the identity."""
    group = check_grid(bits, group_size, weight.shape[-1])
    with torch.no_grad():
        scale, zero = group_params(weight, bits, group, symmetric=False)
        scale, zero = expand_groups(scale, group), expand_groups(zero, group)
        rounded = dequantize_codes(quantize_to_codes(weight.float(), scale, zero, bits),
                                   scale, zero).to(weight.dtype)
    return weight + (rounded - weight).detach()


def orthogonal_from(free: torch.Tensor) -> torch.Tensor:
    """exp(S - S^T): orthogonal for every S, the identity at S = 0."""
    return torch.linalg.matrix_exp(free - free.transpose(-1, -2))


def residual_sites(model: nn.Module, blocks: list[ResidualBlock], embeddings: nn.Module,
                   head: nn.Linear, head_rotation: bool) -> list[Site]:
    """Every tensor U or a V_b multiplies, named as in model.named_parameters()."""
    names = {id(p): n for n, p in model.named_parameters()}

    def name(tensor: torch.Tensor) -> str:
        if id(tensor) not in names:
            raise CompressError("learned rotation: a residual-stream weight is not a "
                                "parameter of the model")
        return names[id(tensor)]

    sites = [Site(name(embeddings.weight), "input", None, False),
             Site(name(head.weight), "input", None, False)]
    for index, block in enumerate(blocks):
        for site in (block.attention, block.mlp):
            sites += [Site(name(r.weight), "input", None, True) for r in site.readers]
            sites.append(Site(name(site.writer.weight), "output", None, True))
            if site.writer.bias is not None:
                sites.append(Site(name(site.writer.bias), "bias", None, False))
        if head_rotation:
            sites.append(Site(name(block.value.weight), "value", index, True))
            if block.value.bias is not None:
                sites.append(Site(name(block.value.bias), "value_bias", index, False))
            sites.append(Site(name(block.attention.writer.weight), "heads_in", index, True))
    return sites


def transform(weight: torch.Tensor, site: Site, u: torch.Tensor,
              heads: list[torch.Tensor]) -> torch.Tensor:
    """`weight` carried into the basis U (or the block's V), as the module docstring says."""
    if site.side == "input":
        return weight @ u
    if site.side in ("output", "bias"):
        return u.T @ weight
    v = heads[site.block]
    d = v.shape[0]
    if site.side == "value":
        return (v.T @ weight.reshape(-1, d, weight.shape[-1])).reshape(weight.shape)
    if site.side == "value_bias":
        return (weight.reshape(-1, d) @ v).reshape(weight.shape)
    return (weight.reshape(weight.shape[0], -1, d) @ v).reshape(weight.shape)  # heads_in


def rotated_parameters(base: dict[str, torch.Tensor], sites: list[Site], u: torch.Tensor,
                       heads: list[torch.Tensor], quantize: Callable | None,
                       dtypes: dict[str, torch.dtype] | None = None
                       ) -> dict[str, torch.Tensor]:
    """The parameters that change, after U / V_b (sites in order, so a weight both a
    writer and heads_in takes both), with `quantize` the loop's rounding, and with
    `dtypes` cast back to the model's own dtype (a bf16 model runs its forward in bf16)."""
    out: dict[str, torch.Tensor] = {}
    for site in sites:
        current = out.get(site.name, base[site.name])
        out[site.name] = transform(current, site, u, heads)
    if quantize is not None:
        for name in {s.name for s in sites if s.quantized}:
            out[name] = quantize(out[name])
    if dtypes is not None:
        out = {name: value.to(dtypes[name]) for name, value in out.items()}
    return out


def check_inputs(calib: torch.Tensor | None, settings: LearnSettings,
                 in_features: list[int]) -> None:
    """CompressError, before any weight changes, when the calibration windows cannot give
    training and held-out windows or the loop's group size does not divide a linear."""
    if calib is None or calib.ndim != 2 or calib.shape[0] <= settings.held_out \
            or calib.shape[1] < 2:
        raise CompressError(f"learned rotation needs more than {settings.held_out} calibration "
                            "windows of at least 2 tokens (held_out of them are not trained "
                            "on): raise the calibration samples or lower learn_held_out")
    for inp in in_features:
        if inp % settings.group_size:
            raise CompressError(f"learned rotation: group size {settings.group_size} does not "
                                f"divide a linear's {inp} inputs: set learn_group_size to a "
                                "divisor")


def learn(model: nn.Module, sites: list[Site], hidden: int, head_dims: list[int],
          calib: torch.Tensor, settings: LearnSettings, progress: Progress | None = None
          ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, Any]]:
    """Train U and the V_b; returns them (float64; identities when learning did not lower
    the held-out KL) and the report's fields. `calib` passed check_inputs."""
    train, held = calib[:-settings.held_out], calib[-settings.held_out:]
    names = {s.name for s in sites}
    base = {n: p.detach().float() for n, p in model.named_parameters() if n in names}
    dtypes = {n: p.dtype for n, p in model.named_parameters() if n in names}
    free_u = torch.zeros(hidden, hidden, requires_grad=True)
    free_v = [torch.zeros(d, d, requires_grad=True) for d in head_dims]
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in frozen:
        p.requires_grad_(False)
    quantize = _quantizer(settings)
    model.eval()
    try:
        teacher = _teacher_logits(model)
        held_out_kl = functools.partial(_held_out_kl, model, base, dtypes, sites, held,
                                        quantize, teacher)
        before = held_out_kl(free_u, free_v)
        optimizer = torch.optim.Adam([free_u, *free_v], lr=settings.lr)
        order = shuffled_forever(train.shape[0], settings.seed)
        losses = []
        for _ in range(settings.steps):
            window = train[next(order)][None, :]
            u, heads = orthogonal_from(free_u), [orthogonal_from(v) for v in free_v]
            params = rotated_parameters(base, sites, u, heads, quantize, dtypes)
            logits = functional_call(model, params, (window,), {"use_cache": False},
                                     strict=False).logits
            loss = kd_loss(logits, teacher(window))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress("rotate", len(losses), settings.steps)
        after = held_out_kl(free_u, free_v)
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    kept = after < before
    with torch.no_grad():
        u = orthogonal_from(free_u.double()) if kept else torch.eye(hidden, dtype=torch.float64)
        heads = [orthogonal_from(v.double()) if kept else torch.eye(d, dtype=torch.float64)
                 for v, d in zip(free_v, head_dims, strict=True)]
    fields = {"steps": settings.steps, "lr": settings.lr, "bits": settings.bits,
              "group_size": settings.group_size, "train_windows": int(train.shape[0]),
              "held_out_windows": int(held.shape[0]), "seq_len": int(calib.shape[1]),
              "held_out_kl_before": before, "held_out_kl_after": after, "kept": kept,
              "losses": losses,
              "distance_from_seeded": float(torch.linalg.matrix_norm(
                  u - torch.eye(hidden, dtype=torch.float64)) / hidden ** 0.5)}
    return u, heads, fields


def _quantizer(settings: LearnSettings) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda w: fake_quantize(w, settings.bits, settings.group_size)


def _teacher_logits(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The float model's logits (the model as it stands: rotated, not quantized)."""

    @torch.no_grad()
    def logits(window: torch.Tensor) -> torch.Tensor:
        return model(input_ids=window, use_cache=False).logits

    return logits


@torch.no_grad()
def _held_out_kl(model, base, dtypes, sites, held, quantize, teacher, free_u,
                 free_v) -> float:
    """The mean per-token KL(float || quantized) over the held-out windows, at the current
    free parameters."""
    u, heads = orthogonal_from(free_u), [orthogonal_from(v) for v in free_v]
    params = rotated_parameters(base, sites, u, heads, quantize, dtypes)
    total = 0.0
    for window in held:
        window = window[None, :]
        logits = functional_call(model, params, (window,), {"use_cache": False},
                                 strict=False).logits
        total += float(kd_loss(logits, teacher(window)))
    return total / held.shape[0]
