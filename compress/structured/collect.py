"""What the channel criteria read from a channel-prunable network (models/channel_groups.py):
per channel group, the scale of its last norm, the weight that produces it and (for taylor)
the gradient of the calibration loss w.r.t. a gate m_j = 1 on each channel where the
group's gate point reads it, one row per batch.

The gate is a forward pre-hook on the gate point that returns a * m; autograd then
gives dL/dm_j = sum_p a_j(p) dL/da_j(p) without touching the model's parameters.

The taylor loss is the task loss (compress/structured/segmentation_distill.task_loss) on
the network's `task_logits`: cross-entropy against soft labels when the caller has them,
else against the model's own prediction. Not the KL to the unpruned model: before pruning
the model IS that model, the KL sits at its minimum and its gradient is exactly zero.
"""

from __future__ import annotations

import dataclasses

import torch

from compress.errors import CompressError
from compress.structured.segmentation_distill import task_loss
from compress.sweep import Progress
from models.channel_groups import ChannelGroup, ChannelPrunable


@dataclasses.dataclass
class BlockTensors:
    gamma: torch.Tensor  # [C] scale of the group's last norm
    expand_weight: torch.Tensor  # [C, ...] the producing weight
    gate_gradients: torch.Tensor | None = None  # [batches, C]


def block_tensors(groups: list[ChannelGroup]) -> dict[str, BlockTensors]:
    return {g.name: BlockTensors(g.norm_scale().detach().clone(),
                                 g.producer_weight().detach().clone()) for g in groups}


def add_gate_gradients(model: ChannelPrunable, groups: list[ChannelGroup],
                       tensors: dict[str, BlockTensors], images: torch.Tensor | None,
                       soft_labels: torch.Tensor | None, batch_size: int,
                       progress: Progress | None = None) -> None:
    """Fill `gate_gradients` of `tensors` from one pass over `images` in eval mode (the
    deployed norms' running statistics: the expansion is about the deployed network),
    `batch_size` images per batch."""
    if images is None or images.shape[0] == 0:
        raise CompressError("criterion taylor needs calibration images: pass some, or use "
                            "a weight-only criterion (bn-scale, l1-filter)")
    if soft_labels is not None and soft_labels.shape[0] != images.shape[0]:
        raise CompressError(f"{soft_labels.shape[0]} label maps for {images.shape[0]} images")
    device = next(model.parameters()).device
    gates = {g.name: torch.ones(g.width, device=device, requires_grad=True) for g in groups}
    hooks = [g.gate_point().register_forward_pre_hook(_gate_hook(gates[g.name]))
             for g in groups]
    rows: list[tuple[torch.Tensor, ...]] = []
    was_training = model.training
    model.eval()
    batches = range(0, images.shape[0], batch_size)
    try:
        for done, first in enumerate(batches, start=1):
            x = images[first:first + batch_size].to(device)
            y = None if soft_labels is None else soft_labels[first:first + batch_size]
            with torch.enable_grad():
                loss = task_loss(model.task_logits(x), y)
                # autograd.grad: no .grad of the model's parameters is written
                rows.append(tuple(g.detach().cpu() for g in
                                  torch.autograd.grad(loss, list(gates.values()))))
            if progress is not None:
                progress("taylor", done, len(batches))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for i, name in enumerate(gates):
        tensors[name].gate_gradients = torch.stack([row[i] for row in rows])


def _gate_hook(gate: torch.Tensor):
    def multiply(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
        shape = (1, -1) + (1,) * (inputs[0].ndim - 2)  # channels on dim 1
        return (inputs[0] * gate.view(shape),)
    return multiply
