"""Running decoder blocks one at a time on cached calibration activations.

The engine never runs the whole model on calibration data after the first step: it
captures what enters block 0 (hidden states plus the keyword arguments the model passes
to its blocks: rotary position embeddings, masks, ...) and from then on calls each block
directly. Only one block's inputs and outputs are held at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class _StopForward(Exception):
    """Raised inside block 0's pre-hook: everything after it is not needed for capture."""


@dataclasses.dataclass
class BlockInputs:
    """The calibration activations entering one block, in micro-batches."""

    hidden: list[torch.Tensor]  # each [batch, seq, hidden], fp32
    kwargs: list[dict[str, Any]]  # the model's keyword arguments for its blocks, per batch


def capture_block0_inputs(model: nn.Module, first_block: nn.Module, calib: torch.Tensor,
                          batch_size: int, device: torch.device) -> BlockInputs:
    """Run the model on `calib` ([N, L] token ids) up to block 0 and keep its inputs."""
    captured = BlockInputs(hidden=[], kwargs=[])

    def pre_hook(_module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden.detach().to(torch.float32))
        captured.kwargs.append({k: _detach(v) for k, v in kwargs.items()})
        raise _StopForward

    handle = first_block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in calib.split(batch_size):
                with contextlib.suppress(_StopForward):
                    model(input_ids=batch.to(device), use_cache=False)
    finally:
        handle.remove()
    return captured


def run_block(block: nn.Module, inputs: BlockInputs, forward_dtype: torch.dtype,
              keep_outputs: bool, *, replace: bool = False) -> BlockInputs | None:
    """Call `block` on every micro-batch; return its outputs as the next block's inputs.

    `replace` puts each micro-batch's output in place of its input as soon as it exists
    (and returns `inputs`), so a stream costs one set of activations, not two, when the
    inputs are not needed afterwards."""
    outputs: list[torch.Tensor] = []
    with torch.no_grad(), _autocast(forward_dtype, inputs.hidden[0].device):
        for i, (hidden, kwargs) in enumerate(zip(inputs.hidden, inputs.kwargs, strict=True)):
            out = block(hidden, **kwargs)
            out = out[0] if isinstance(out, tuple | list) else out
            if keep_outputs and replace:
                inputs.hidden[i] = out.detach().to(torch.float32)
            elif keep_outputs:
                outputs.append(out.detach().to(torch.float32))
    if keep_outputs and replace:
        return inputs
    return BlockInputs(hidden=outputs, kwargs=inputs.kwargs) if keep_outputs else None


def _autocast(dtype: torch.dtype, device: torch.device):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


@contextlib.contextmanager
def collect_linear_inputs(linears: dict[str, nn.Linear], stats: dict) -> Iterator[None]:
    """While active, every call of a linear in `linears` adds its input to `stats[name]`."""
    handles = []
    for name, linear in linears.items():
        def hook(_module, args, _name=name):
            stats[_name].add(args[0])
        handles.append(linear.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
