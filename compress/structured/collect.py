"""What the channel criteria read from a portrait segmenter: per prunable block, the
depthwise norm's gamma, the expand conv's weight and (for taylor) the gradient of the
calibration loss w.r.t. a gate m_j = 1 on each hidden channel's project-conv input, one
row per batch.

The gate is a forward pre-hook on the project conv that returns a * m; autograd then
gives dL/dm_j = sum_p a_j(p) dL/da_j(p) without touching the model's parameters.

The taylor loss is the task loss (compress/structured/segmentation_distill.task_loss):
cross-entropy against soft labels when the caller has them, else against the model's own
per-pixel prediction. Not the KL to the unpruned model: before pruning the model IS that
model, the KL sits at its minimum and its gradient is exactly zero.
"""

from __future__ import annotations

import dataclasses

import torch

from compress.errors import CompressError
from compress.structured.segmentation_distill import segmentation_logits, task_loss
from compress.sweep import Progress
from models.portrait import InvertedResidual


@dataclasses.dataclass
class BlockTensors:
    gamma: torch.Tensor  # [C] depthwise norm scale
    expand_weight: torch.Tensor  # [C, in, 1, 1]
    gate_gradients: torch.Tensor | None = None  # [batches, C]


def block_tensors(blocks: dict[str, InvertedResidual]) -> dict[str, BlockTensors]:
    return {name: BlockTensors(b.depthwise_bn.weight.detach().clone(),
                               b.expand_conv.weight.detach().clone())
            for name, b in blocks.items()}


def add_gate_gradients(model: torch.nn.Module, blocks: dict[str, InvertedResidual],
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
    gates = {name: torch.ones(b.hidden, device=device, requires_grad=True)
             for name, b in blocks.items()}
    hooks = [b.project_conv.register_forward_pre_hook(_gate_hook(gates[name]))
             for name, b in blocks.items()]
    rows: list[tuple[torch.Tensor, ...]] = []
    was_training = model.training
    model.eval()
    batches = range(0, images.shape[0], batch_size)
    try:
        for done, first in enumerate(batches, start=1):
            x = images[first:first + batch_size].to(device)
            y = None if soft_labels is None else soft_labels[first:first + batch_size]
            with torch.enable_grad():
                loss = task_loss(segmentation_logits(model, x), y)
                # autograd.grad: no .grad of the model's parameters is written
                rows.append(tuple(g.detach().cpu() for g in
                                  torch.autograd.grad(loss, list(gates.values()))))
            if progress is not None:
                progress("taylor", done, len(batches))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for i, name in enumerate(blocks):
        tensors[name].gate_gradients = torch.stack([row[i] for row in rows])


def _gate_hook(gate: torch.Tensor):
    def multiply(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
        return (inputs[0] * gate.view(1, -1, 1, 1),)
    return multiply


@torch.no_grad()
def hidden_channel_flops(model: torch.nn.Module, blocks: dict[str, InvertedResidual],
                         shape: tuple[int, int, int, int]) -> dict[str, float]:
    """FLOPs one hidden channel of each block costs for one image of `shape`: its expand
    row, depthwise filter and project column, 2 per multiply-add (as count_flops)."""
    totals = dict.fromkeys(blocks, 0.0)
    hooks = []
    for name, block in blocks.items():
        for conv in (block.expand_conv, block.depthwise_conv, block.project_conv):
            def count(module, _inputs, output, name=name):
                per_output = module.in_channels // module.groups * module.kernel_size[0] * \
                    module.kernel_size[1]
                totals[name] += output[0].numel() * 2 * per_output
            hooks.append(conv.register_forward_hook(count))
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return {name: totals[name] / block.hidden for name, block in blocks.items()}
