"""Recovery of one compressed decoder block: learn its free parameters so that it
reproduces the dense block's outputs (block reconstruction, BRECQ arXiv 2102.05426):

    min over theta  mean_b || block_theta(x_b) - y_b ||^2

x_b = what enters the compressed block (the compressed model upstream), y_b = the dense
block's output on the dense model's activations, theta = the terms of
`compress.recovery.trainables` (norms, quantization scales, pruned linears' survivors).
Adam, a fixed step count, fp32. The block is measured before and after with its real,
stored weights (fp16 scales included) and keeps the result only when the loss fell, so
recovery never makes a block worse. One block and its activations are all it holds: the
in-memory stage and the streaming engine both call `recover_block`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from compress.block_io import BlockInputs
from compress.distill_batches import shuffled_forever
from compress.errors import CompressError
from compress.recovery.config import RecoverConfig
from compress.recovery.trainables import Term, build_terms, stored_value
from models.qformat import QuantizedWeight


def recover_block(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor],
                  quantized: dict[str, QuantizedWeight], config: RecoverConfig
                  ) -> tuple[dict[str, QuantizedWeight], dict[str, Any]]:
    """Train `block` in place towards `targets`; return the packed forms of its quantized
    linears (names relative to the block, e.g. "mlp.down_proj"; the given ones when the
    block kept its weights) and a report: loss before/after, steps, seconds, outcome."""
    start = time.perf_counter()
    _check(block, inputs, targets, quantized)
    dtypes = _float_dtypes(block)
    block.float()  # fp32 training; a bf16/fp16 block goes back to its dtypes at the end
    try:
        before = block_loss(block, inputs, targets)
        terms = build_terms(block, quantized, config.parts())
        report = {"loss_before": before, "loss_after": before, "steps": 0,
                  "trainable": sum(t.free_count() for t in terms), "outcome": "unchanged"}
        if not terms or before == 0.0:
            report["outcome"] = "nothing to train" if not terms else "already exact"
        else:
            _train(block, inputs, targets, terms, config)
            report["steps"] = config.steps
            after, kept = _accept_if_better(block, inputs, targets, terms, before)
            report.update(loss_trained=after, loss_after=after if kept else before,
                          outcome="recovered" if kept else "kept original (no gain)")
            if kept:
                quantized = {**quantized, **{t.linear: t.stored() for t in terms
                                             if t.kind == "scales"}}
    finally:
        _restore_dtypes(block, dtypes)
    report["seconds"] = time.perf_counter() - start
    return quantized, report


@torch.no_grad()
def block_loss(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor]) -> float:
    """Mean squared error of the block's outputs against `targets`, over every element of
    every micro-batch (fp32, double-precision sum so the comparison is stable)."""
    total, count = 0.0, 0
    for hidden, kwargs, target in zip(inputs.hidden, inputs.kwargs, targets, strict=True):
        out = _first(block(hidden.float(), **kwargs))
        total += float((out.float() - target.float()).double().pow(2).sum())
        count += target.numel()
    return total / count


def _train(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor],
           terms: list[Term], config: RecoverConfig) -> None:
    groups = [{"params": [t.free for t in terms if t.kind == kind], "lr": lr}
              for kind, lr in (("scales", config.scale_lr), ("norms", config.lr),
                               ("weights", config.lr))]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]])
    fixed = {name: p.detach() for name, p in block.named_parameters()}
    order = shuffled_forever(len(inputs.hidden), config.seed)
    for _ in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        picks = [next(order) for _ in range(config.batch_size)]
        for index in picks:  # one micro-batch's graph at a time
            values = {**fixed, **{t.name: t.value() for t in terms}}
            out = _first(functional_call(block, values, (inputs.hidden[index].float(),),
                                         inputs.kwargs[index]))
            loss = (out.float() - targets[index].float()).pow(2).mean() / len(picks)
            loss.backward()
        optimizer.step()


@torch.no_grad()
def _accept_if_better(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor],
                      terms: list[Term], before: float) -> tuple[float, bool]:
    """Write the trained, stored values into the block, measure, and put the originals
    back unless the loss fell (NaN or inf never count as lower)."""
    params = dict(block.named_parameters())
    originals = {t.name: params[t.name].detach().clone() for t in terms}
    for term in terms:
        params[term.name].copy_(stored_value(term))
    after = block_loss(block, inputs, targets)
    kept = after < before
    if not kept:
        for name, original in originals.items():
            params[name].copy_(original)
    return after, kept


def _check(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor],
           quantized: dict[str, QuantizedWeight]) -> None:
    if not inputs.hidden:
        raise CompressError("recover needs calibration activations: the block got none")
    if len(targets) != len(inputs.hidden):
        raise CompressError(f"recover got {len(targets)} target batches for "
                            f"{len(inputs.hidden)} input batches: they must pair up")
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    for name, q in quantized.items():
        linear = linears.get(name)
        if linear is None:
            raise CompressError(f"quantized linear {name!r} is not a linear of this block "
                                f"(its linears: {', '.join(sorted(linears))})")
        weight = linear.weight.detach()
        if tuple(weight.shape) != tuple(q.shape) or not torch.equal(
                weight, q.dequantize().to(weight.dtype)):
            raise CompressError(f"{name}: the block's weight is not what its packed form "
                                "stands for (a stage after quantization changed it): put "
                                "recover right after the quantization stage")


def _float_dtypes(block: nn.Module) -> dict[str, torch.dtype]:
    tensors = {**dict(block.named_parameters()), **dict(block.named_buffers())}
    return {name: t.dtype for name, t in tensors.items() if t.is_floating_point()}


def _restore_dtypes(block: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    tensors = {**dict(block.named_parameters()), **dict(block.named_buffers())}
    for name, dtype in dtypes.items():
        if tensors[name].dtype != dtype:
            tensors[name].data = tensors[name].data.to(dtype)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out

