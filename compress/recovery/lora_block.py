"""Block-wise LoRA: the `lora` stage for models that do not fit in memory, one decoder
block at a time under the streaming engine (compress/recovery/lora_streaming.py).

The in-memory stage (lora_train.py) distils whole-model next-token distributions, which
needs the dense and the compressed model at once. Here each compressed block i learns
from the dense block alone (block reconstruction, the objective of BRECQ arXiv 2102.05426
that block recovery uses too):

    adapters of block i:  min over A, B   mean_b || block_i(x_b) + LoRA - y_b ||^2

x_b = what enters the compressed block (the compressed, already adapted upstream blocks),
y_b = the dense block's output on the dense model's activations; A_0 seeded small random,
B_0 = 0 (the block starts exactly compressed), Adam on A and B only, `block_steps` steps
of one calibration micro-batch each, then A and B rounded to fp16 (what the artifact
stores). The block is measured before and after with the fp16 adapters; when they did
not lower its loss they are dropped, so recovery never makes a block worse.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from compress.block_io import BlockInputs
from compress.distill_batches import shuffled_forever
from compress.recovery.block_recovery import _first, _float_dtypes, _restore_dtypes, block_loss
from compress.recovery.lora import LoraConfig
from compress.recovery.lora_train import init_adapter
from models.qformat.lora import LoraAdapter, attach_adapter, detach_adapters, round_to_storage


def train_block_adapters(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor],
                         linears: dict[str, nn.Linear], config: LoraConfig,
                         generator: torch.Generator
                         ) -> tuple[dict[str, LoraAdapter], dict[str, Any]]:
    """Attach adapters to `linears` (names relative to the block) and train them towards
    `targets`; returns the kept adapters (attached, fp16 values; {} when they did not
    help) and a report of the block's loss before and after."""
    start = time.perf_counter()
    dtypes = _float_dtypes(block)
    block.float()
    try:
        before = block_loss(block, inputs, targets)
        adapters = {name: init_adapter(linear, config, generator)
                    for name, linear in linears.items()}
        for name, adapter in adapters.items():
            attach_adapter(linears[name], adapter)
        _train(block, inputs, targets, adapters, config)
        round_to_storage(adapters)
        after = block_loss(block, inputs, targets)
        kept = after < before
        if not kept:
            detach_adapters(block)
            adapters = {}
    finally:
        _restore_dtypes(block, dtypes)
    return adapters, {"loss_before": before, "loss_after": after if kept else before,
                      "loss_trained": after, "steps": config.block_steps,
                      "outcome": "recovered" if kept else "kept the compressed block (no gain)",
                      "seconds": time.perf_counter() - start}


def _train(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor],
           adapters: dict[str, LoraAdapter], config: LoraConfig) -> None:
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    order = shuffled_forever(len(inputs.hidden), config.seed)
    for _ in range(config.block_steps):
        index = next(order)
        optimizer.zero_grad(set_to_none=True)
        out = _first(block(inputs.hidden[index].float(), **inputs.kwargs[index]))
        loss = (out.float() - targets[index].float()).pow(2).mean()
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
    for p in params:
        p.requires_grad_(False)
