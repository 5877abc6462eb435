"""Block-wise recovery as an in-memory recipe stage: the whole model is in memory, the
dense original (`teacher=`, kept by the pipeline) gives the targets block by block.

    x_0, y_0 = what enters block 0 of the compressed model and of the dense model
    for each block i:
        t_i = dense block i (y_i)              targets
        recover compressed block i on x_i towards t_i
        x_{i+1} = recovered block i (x_i),  y_{i+1} = t_i

so each block learns to undo the error of everything upstream as well as its own (the
targets are the dense model's, not the dense block on compressed inputs). Only one
block's activations (of both models) are held at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from compress.block_io import capture_block0_inputs, run_block
from compress.config import register_handler
from compress.errors import CompressError
from compress.recovery.block_recovery import recover_block
from compress.recovery.config import RecoverConfig
from compress.sweep import Progress
from models.adapter import decoder_layout
from models.qformat import QuantizedWeight


@dataclasses.dataclass
class RecoverReport:
    """What the stage did, in the shape the pipeline records stages."""

    blocks: list[dict[str, Any]]  # recover_block's report per block, in order
    quantized: dict[str, QuantizedWeight]  # full linear name -> packed form, updated
    seconds: dict[str, float]
    calib_tokens: int
    forward_dtype: str = "float32"  # recovery trains and measures in fp32

    def manifest_section(self) -> dict[str, Any]:
        return {"kind": "recover", "method": RecoverConfig.method,
                "blocks_recovered": sum(b["outcome"] == "recovered" for b in self.blocks),
                "loss_before": [b["loss_before"] for b in self.blocks],
                "loss_after": [b["loss_after"] for b in self.blocks],
                "outcome": [b["outcome"] for b in self.blocks],
                "steps": [b["steps"] for b in self.blocks],
                "block_seconds": [b["seconds"] for b in self.blocks],
                "trainable": sum(b["trainable"] for b in self.blocks),
                "calib_tokens": self.calib_tokens}


@register_handler(RecoverConfig)
def recover_stage(model: nn.Module, config: RecoverConfig, calib: torch.Tensor | None, *,
                  teacher: nn.Module | None = None,
                  quantized: dict[str, QuantizedWeight] | None = None,
                  device: str | torch.device = "cpu", batch_size: int = 4,
                  progress: Progress | None = None, **_options: Any) -> RecoverReport:
    """Recover every decoder block of `model` in place towards `teacher` (the dense model)
    on the calibration token ids `calib` [N, L], `batch_size` rows per micro-batch;
    `quantized` are the current packed forms by full linear name."""
    if teacher is None:
        raise CompressError("recover needs the dense model as teacher: put it in a recipe "
                            "after a compression stage (the model before it is the teacher)")
    if teacher is model:
        raise CompressError("recover's teacher is the model itself: pass the dense copy")
    if calib is None or calib.ndim != 2 or calib.shape[0] == 0:
        raise CompressError("recover needs calibration token ids of shape [N, L]")
    device = torch.device(device)
    # Both in eval mode: dropout would make the targets and the trained block random.
    student_layout = decoder_layout(model.to(device).eval())
    teacher_layout = decoder_layout(teacher.to(device).eval())
    n_blocks = len(student_layout.blocks)
    if len(teacher_layout.blocks) != n_blocks:
        raise CompressError(f"the teacher has {len(teacher_layout.blocks)} blocks and the "
                            f"model {n_blocks}: recover needs the same depth")
    quantized = dict(quantized or {})
    timing = {"capture": 0.0, "forward": 0.0, "method": 0.0}
    with _timed(timing, "capture"):
        inputs = capture_block0_inputs(model, student_layout.blocks[0], calib, batch_size,
                                       device)
        dense = capture_block0_inputs(teacher, teacher_layout.blocks[0], calib, batch_size,
                                      device)
    reports = []
    for index, block in enumerate(student_layout.blocks):
        with _timed(timing, "forward"):
            dense = run_block(teacher_layout.blocks[index], dense, torch.float32, True)
        prefix = f"{student_layout.blocks_name}.{index}."
        local = {n[len(prefix):]: q for n, q in quantized.items() if n.startswith(prefix)}
        with _timed(timing, "method"):
            try:
                updated, report = recover_block(block, inputs, dense.hidden, local, config)
            except CompressError as exc:  # the per-block function does not know the index
                raise CompressError(f"block {index}: {exc}") from None
        quantized.update({prefix + n: q for n, q in updated.items()})
        reports.append(report)
        if index + 1 < n_blocks:
            with _timed(timing, "forward"):
                inputs = run_block(block, inputs, torch.float32, True)
        if progress is not None:
            progress("recover", index + 1, n_blocks)
    model.eval()
    return RecoverReport(reports, quantized, timing, int(calib.numel()))


@contextlib.contextmanager
def _timed(timing: dict[str, float], key: str) -> Iterator[None]:
    """Adds the seconds spent inside the `with` to `timing[key]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[key] += time.perf_counter() - start
