"""Calibration for expert dropping: run the model on calibration data with the routing
groups recording, and turn what they recorded into one `ExpertStats` per group.

The model is either a causal LM (calibration = token ids [N, L], integer) or an image
classifier (calibration = normalised images [N, C, H, W], float); the dtype tells which.
Gradients for the gradient-entropy criterion come from a label-free loss: next-token
cross-entropy for an LM, cross-entropy against the model's own top-1 prediction for a
classifier (calibration images carry no labels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError
from compress.experts.criteria import ExpertStats
from models.moe_groups import MoeGroup, RoutingRecord


def is_token_batch(calib: torch.Tensor) -> bool:
    return not calib.dtype.is_floating_point


def model_logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits of an HF causal LM (its output's `.logits`) or of a plain classifier."""
    out = model(batch)
    return out.logits if hasattr(out, "logits") else out


def calibration_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Label-free loss whose gradient tells which weights the model's answers rely on."""
    logits = model_logits(model, batch)
    if is_token_batch(batch):
        vocab = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(),
                               batch[:, 1:].reshape(-1))
    return F.cross_entropy(logits.float(), logits.detach().argmax(dim=-1))


def batches(calib: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, calib.shape[0], batch_size):
        yield calib[start:start + batch_size]


def collect_stats(model: nn.Module, groups: list[MoeGroup], calib: torch.Tensor, *,
                  batch_size: int, need_routing: bool, need_grads: bool, seed: int,
                  device: torch.device | str = "cpu",
                  progress: Callable[[str, int, int], None] | None = None
                  ) -> list[ExpertStats]:
    """One ExpertStats per group from one pass over `calib` (routing records, and the
    calibration loss's gradient w.r.t. each group's stacked experts when asked)."""
    if calib is None or calib.shape[0] == 0:
        if need_routing or need_grads:
            raise CompressError("this criterion needs calibration data; none was given")
        return [_weight_stats(g, seed + i) for i, g in enumerate(groups)]
    records: list[list[RoutingRecord]] = [[] for _ in groups]
    params = [p for g in groups for p in g.expert_parameters()]
    if need_grads:
        for p in params:
            p.grad = None
    was_training = model.training
    model.eval()  # no dropout: the statistics describe the deployed model
    total = -(-calib.shape[0] // batch_size)
    try:
        for group, store in zip(groups, records, strict=True):
            group.recording = store if need_routing else None
        for step, batch in enumerate(batches(calib, batch_size)):
            batch = batch.to(device)
            if need_grads:
                calibration_loss(model, batch).backward()  # sums over batches in .grad
            else:
                with torch.no_grad():
                    model_logits(model, batch)
            if progress is not None:
                progress("expert statistics", step + 1, total)
    finally:
        for group in groups:
            group.recording = None
        model.train(was_training)
    stats = []
    for i, (group, store) in enumerate(zip(groups, records, strict=True)):
        s = _weight_stats(group, seed + i)
        if need_routing:
            _add_routing(s, store)
        if need_grads:
            s.expert_grads = torch.cat([p.grad.detach().reshape(group.num_experts, -1).cpu()
                                        for p in group.expert_parameters()], dim=1)
        stats.append(s)
    if need_grads:
        for p in params:
            p.grad = None
    return stats


def _weight_stats(group: MoeGroup, seed: int) -> ExpertStats:
    return ExpertStats(num_experts=group.num_experts,
                       router_weight=group.router_weight().detach().cpu(),
                       expert_weights=[p.detach().cpu() for p in group.expert_parameters()],
                       seed=seed)


def _add_routing(stats: ExpertStats, records: list[RoutingRecord]) -> None:
    if not records:
        raise CompressError("no routing was recorded: the calibration forward never reached "
                            "a mixture-of-experts layer")
    stats.router_probs = torch.cat([r.router_probs for r in records])
    stats.chosen = torch.cat([r.chosen for r in records]).long()
    stats.gates = torch.cat([r.gates for r in records])
    stats.expert_output_norms = torch.cat([r.expert_output_norms for r in records])
    stats.__post_init__()  # re-check shapes now that routing is filled in


def reconstruction_fn(model: nn.Module, group: MoeGroup, calib: torch.Tensor, *,
                      batch_size: int, device: torch.device | str = "cpu"
                      ) -> Callable[[list[int]], torch.Tensor]:
    """`fn(subset)` -> the group's output on `calib` with only `subset` allowed (NAEE's
    layer output, arXiv 2402.14800).

    A group that is a module (a token-routed MoE layer) is re-run alone on the inputs it
    saw in one forward of the full model, so each candidate costs one layer, not a model.
    A group spanning several blocks (V-MoE's per-image router) has no single layer: its
    output is the model's logits."""
    if isinstance(group, nn.Module):
        inputs = _captured_inputs(model, group, calib, batch_size, device)

        def layer_output(subset: list[int]) -> torch.Tensor:
            group.allowed = subset
            try:
                with torch.no_grad():
                    outs = [_first(group(x)) for x in inputs]
            finally:
                group.allowed = None
            return torch.cat([o.reshape(-1, o.shape[-1]) for o in outs])
        return layer_output

    def model_output(subset: list[int]) -> torch.Tensor:
        group.allowed = subset
        try:
            with torch.no_grad():
                return torch.cat([model_logits(model, b.to(device)).float()
                                  for b in batches(calib, batch_size)])
        finally:
            group.allowed = None
    return model_output


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _captured_inputs(model: nn.Module, layer: nn.Module, calib: torch.Tensor,
                     batch_size: int, device) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            for batch in batches(calib, batch_size):
                model_logits(model, batch.to(device))
    finally:
        handle.remove()
    return seen
