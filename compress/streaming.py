"""The streaming engine: every stage of a recipe applied to one decoder block at a time,
with only that block's weights in memory.

    capture what enters block 0 (embeddings only are materialised)
    for each block i:
        read block i's weights (decoder.materialized)
        [recovery stages present] dense outputs of block i on the dense stream: targets
        for each stage s:
            statistics of block i's linears on stream s   (stages that need data)
            stage s processes block i
            stream s <- block i's outputs on stream s      (block i+1's inputs for stage s)
        hand block i to `finished` (the writer puts it in an output shard), free it

Stream s is what enters a block when the blocks before it have gone through stages
0..s, which is exactly what the in-memory engine's sweep for stage s sees (it runs after
stages 0..s-1 finished on the whole model). So a multi-stage recipe streamed gives the
same weights, bit for bit, as the in-memory engine running the stages one after another
(tests/compress/test_streaming_engine.py checks it), at the cost of one activation stream
per data-driven stage. A data-free stage (magnitude, RTN) runs no forward at all.

A stage that changes the residual stream's basis (rotate) is not one of these per-block
steps: it rotates the materialised table before the block-0 capture and each block before
anything else sees it (`changes_stream` hooks), so every stream, the dense one included,
runs on the rotated model.

Resuming: `start` and `resume_streams` continue from the activations a checkpoint saved
after block start-1; the block-0 capture is redone for the keyword arguments (rotary
tables, masks), which depend only on the calibration tokens.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

from compress.block_io import BlockInputs, capture_block0_inputs, collect_linear_inputs, run_block
from compress.block_stages import BlockStage
from compress.stats import LinearStats
from models.adapter import DecoderLayout
from models.qformat import QuantizedWeight


class StreamedDecoder(Protocol):
    """What the engine needs of a lazily loaded decoder (models/lazy/skeleton.py)."""

    model: nn.Module
    layout: DecoderLayout
    device: torch.device

    @property
    def n_blocks(self) -> int: ...

    def materialized(self, *modules: nn.Module): ...


# (block index, the block with its final weights, packed linears by full name,
#  the activation streams entering the next block) -> None
Finished = Callable[[int, nn.Module, dict[str, QuantizedWeight], list[list[torch.Tensor]]], None]


@dataclasses.dataclass
class StreamPlan:
    """Which activation streams the stages need: one per data-driven stage, plus the dense
    stream when a stage learns from the dense block's outputs."""

    stages: list[BlockStage]

    @property
    def data_stages(self) -> list[int]:
        return [i for i, s in enumerate(self.stages) if s.needs or _wants_dense(s)]

    @property
    def dense(self) -> bool:
        return any(_wants_dense(s) for s in self.stages)

    @property
    def n_streams(self) -> int:
        return len(self.data_stages) + int(self.dense)


def _wants_dense(stage: BlockStage) -> bool:
    return bool(getattr(stage, "wants_dense_targets", False))


def stream_compress(decoder: StreamedDecoder, stages: list[BlockStage],
                    calib: torch.Tensor | None, finished: Finished, *,
                    forward_dtype: torch.dtype = torch.float32, batch_size: int = 4,
                    store_dtype: Callable[[str], torch.dtype] | None = None,
                    start: int = 0, resume_streams: list[list[torch.Tensor]] | None = None,
                    seconds: dict[str, float] | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> None:
    """Apply `stages` to every block of `decoder` from block `start` on; `finished` is
    called once per block, in order, while the block's weights are still in memory.

    `store_dtype(param name)` is the dtype the writer stores a float parameter in; weights
    a stage changed are rounded to it before they feed the next stage or block, so later
    blocks calibrate on the model as it will be stored (no-op for float32 storage)."""
    plan = StreamPlan(stages)
    seconds = seconds if seconds is not None else {}
    for key in ("capture", "read", "forward", "method", "write"):
        seconds.setdefault(key, 0.0)
    for stage in _basis_changes(stages):
        stage.prepare(decoder)
    streams = _initial_streams(decoder, plan, calib, batch_size, resume_streams, seconds)
    device = decoder.device
    for index in range(start, decoder.n_blocks):
        block = decoder.layout.blocks[index]
        t0 = time.perf_counter()
        with decoder.materialized(block):
            seconds["read"] += time.perf_counter() - t0
            streams = _compress_block(decoder, plan, index, block, streams, forward_dtype,
                                      device, store_dtype, seconds)
            packed = {}
            for stage in stages:
                packed.update(stage.packed(index))
            t0 = time.perf_counter()
            finished(index, block, packed, [s.hidden for s in streams])
            seconds["write"] += time.perf_counter() - t0
        if progress:
            progress("stream", index + 1, decoder.n_blocks)


def _initial_streams(decoder, plan: StreamPlan, calib, batch_size, resume_streams,
                     seconds) -> list[BlockInputs]:
    if plan.n_streams == 0:
        return []
    if calib is None or calib.ndim != 2 or calib.shape[0] == 0:
        raise ValueError("these stages need calibration token ids of shape [N, L]")
    t0 = time.perf_counter()
    with decoder.materialized(decoder.layout.embeddings):
        for stage in _basis_changes(plan.stages):
            stage.before_capture(decoder.layout.embeddings)
        captured = capture_block0_inputs(decoder.model, decoder.layout.blocks[0], calib,
                                         batch_size, decoder.device)
    seconds["capture"] += time.perf_counter() - t0
    if resume_streams is None:  # one list per stream: they are updated in place
        return [BlockInputs(list(captured.hidden), captured.kwargs)
                for _ in range(plan.n_streams)]
    if len(resume_streams) != plan.n_streams:
        raise ValueError("the checkpoint holds a different number of activation streams")
    device = decoder.device
    return [BlockInputs([h.to(device) for h in hidden], captured.kwargs)
            for hidden in resume_streams]


def _compress_block(decoder, plan: StreamPlan, index: int, block: nn.Module,
                    streams: list[BlockInputs], forward_dtype, device, store_dtype,
                    seconds) -> list[BlockInputs]:
    new_streams = list(streams)
    targets = None
    t0 = time.perf_counter()
    for stage in _basis_changes(plan.stages):  # before anything sees the block
        stage.before_block(index, block)
    seconds["method"] += time.perf_counter() - t0
    if plan.dense:  # the last stream is the dense model's
        t0 = time.perf_counter()
        dense_out = run_block(block, streams[-1], forward_dtype, keep_outputs=True,
                              replace=True)
        seconds["forward"] += time.perf_counter() - t0
        targets, new_streams[-1] = dense_out.hidden, dense_out
    prefix = f"{decoder.layout.blocks_name}.{index}"
    all_linears = decoder.layout.block_linears(index)
    for stage_index, stage in enumerate(plan.stages):
        stream_index = (plan.data_stages.index(stage_index)
                        if stage_index in plan.data_stages else None)
        linears = {n: m for n, m in all_linears.items() if stage.keep(n)}
        stats = {n: LinearStats.empty(m.in_features, stage.needs, device)
                 for n, m in linears.items()}
        inputs = streams[stream_index] if stream_index is not None else None
        if stage.needs and linears:
            t0 = time.perf_counter()
            with collect_linear_inputs(linears, stats):
                run_block(block, inputs, forward_dtype, keep_outputs=False)
            seconds["forward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if _wants_dense(stage):
            stage.process_with_targets(index, prefix, block, inputs, targets)  # type: ignore[attr-defined]
        else:
            stage.process(index, all_linears, linears, stats)
        packed = {n for s in plan.stages for n in s.packed(index)}
        _round_to_storage(block, prefix, packed, store_dtype)
        seconds["method"] += time.perf_counter() - t0
        if inputs is not None and index + 1 < decoder.n_blocks:
            t0 = time.perf_counter()
            new_streams[stream_index] = run_block(block, inputs, forward_dtype,
                                                  keep_outputs=True, replace=True)
            seconds["forward"] += time.perf_counter() - t0
    return new_streams


def _basis_changes(stages: list[BlockStage]) -> list[BlockStage]:
    """Stages that rotate the residual stream (compress/rotate/streaming_stage.py)."""
    return [s for s in stages if s.changes_stream]


def _round_to_storage(block: nn.Module, prefix: str, packed: set[str],
                      store_dtype: Callable[[str], torch.dtype] | None) -> None:
    if store_dtype is None:
        return
    for name, param in block.named_parameters():
        full = f"{prefix}.{name}"
        dtype = store_dtype(full)
        if (dtype != param.dtype and param.is_floating_point()
                and full.removesuffix(".weight") not in packed):
            param.data.copy_(param.data.to(dtype).to(param.dtype))


def iter_block_params(block: nn.Module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(full name, tensor) of a materialised block's parameters, in module order."""
    for name, param in block.named_parameters():
        yield f"{prefix}.{name}", param.data
