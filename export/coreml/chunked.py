"""`export_chunked_coreml`: the decoder as N Core ML packages run one after another, each
converted on its own from a DecoderWeights (export.llm.lazy_weights reads one tensor at a
time from the checkpoint), so converting a 3B model holds about one chunk, not the model.

    OUT_chunk1.mlpackage   input_ids [1, T] int32, position [1] int32 -> hidden [1, T, H] fp16
    OUT_chunkK.mlpackage   hidden [1, T, H] fp16, position [1] int32  -> hidden_out (middle)
                                                                       or logits (last)
    states of chunk k:     keys, values [layers of chunk k, kv_heads, max_context, head_dim]

The names follow Apple's chunked models (ml-stable-diffusion's `*_chunk1.mlpackage`); an
app feeds chunk k's `hidden_out` to chunk k+1's `hidden` with the same `position`, each
chunk updating its own cache state. Which layers each chunk holds: export.coreml.chunk_plan.
Packed linears and (with --embedding-bits) the table and head are carried as in the
one-package export (export.coreml.llm._carry_weights).
"""

from __future__ import annotations

import dataclasses
import gc
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from export.coreml.chunk_module import chunk_module
from export.coreml.chunk_plan import Chunk, auto_chunk_count, plan_chunks
from export.coreml.llm import _carry_weights, input_scales, save_mlprogram, stateful_to_mil
from export.errors import require
from export.llm.chunk_files import ChunkedRecords, ChunkFileRecord
from export.llm.decoder_weights import DecoderWeights
from export.quiet import captured_console


@dataclasses.dataclass
class ChunkFile(ChunkFileRecord):
    parameters: int  # float parameters the chunk's module held (tables counted again)


@dataclasses.dataclass
class ChunkedCoremlExport(ChunkedRecords):
    """What llm_job reads of an export (path, decoder with shape and parameter_count,
    carried, dropped) plus each chunk's file. `decoder` is the DecoderWeights: it reads
    the evaluated weights again for verification, one tensor at a time."""

    path: Path
    decoder: DecoderWeights
    chunks: list[ChunkFile]
    input_scales: dict = dataclasses.field(default_factory=dict)

    @property
    def extra_details(self) -> dict:
        """For the export report (export.llm_job): each chunk's file, size, layers, cache."""
        return {"chunks": [c.describe() for c in self.chunks]}


def chunk_path(out: Path, index: int, count: int) -> Path:
    """OUT.mlpackage -> OUT_chunk{index + 1}.mlpackage; one chunk is OUT itself (the
    one-package model: input_ids, position -> logits)."""
    if count == 1:
        return out
    return out.with_name(f"{out.stem}_chunk{index + 1}{out.suffix}")


def chunk_siblings(out: Path) -> list[Path]:
    """Chunk packages of an earlier export to `out` (guarded and replaced like `out`)."""
    return sorted(out.parent.glob(f"{out.stem}_chunk*{out.suffix}"))


def package_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def chunk_count(weights: DecoderWeights, chunks: int | None) -> int:
    """`chunks`, or (None) as many as keep each chunk's float32 weights under
    export.coreml.chunk_plan.AUTO_CHUNK_FLOAT32_BYTES."""
    if chunks is not None:
        return chunks
    return auto_chunk_count(4 * weights.parameter_count(), weights.n_blocks)


def plan_for(weights: DecoderWeights, count: int) -> list[Chunk]:
    """Chunks balanced by parameters: the table in the first, norm + head in the last."""
    shape = weights.shape
    rows, width = weights.embedding_shape()
    table = rows * width
    head = table + shape.hidden  # a tied head is the table again, in the last chunk
    names = weights.block_linear_names(0)
    per_layer = sum(int(torch.Size(weights.module.get_submodule(n).weight.shape).numel())
                    for n in names.values())
    return plan_chunks(weights.n_blocks, count, layer_weight=per_layer, first_extra=table,
                       last_extra=head)


def export_chunked_coreml(weights: DecoderWeights, out: Path, *, chunks: int | None,
                          table_quantizer: Callable | None = None,
                          progress: Callable[[str], None] | None = None
                          ) -> ChunkedCoremlExport:
    """Write chunk_path(out, k) for each chunk k; `table_quantizer` as in
    export.coreml.llm.export_llm_coreml. Each chunk's module and program are freed before
    the next one is built."""
    ct = require("coremltools", "coreml", "Core ML export")
    if table_quantizer is not None:
        weights.quantize_tables(table_quantizer)
    plan = plan_for(weights, chunk_count(weights, chunks))
    files, scales = [], {}
    for chunk in plan:
        path = chunk_path(out, chunk.index, chunk.count)
        if progress is not None:
            progress(f"chunk {chunk.index + 1} of {chunk.count}: layers {chunk.start}.."
                     f"{chunk.stop - 1}")
        files.append(_export_chunk(ct, weights, chunk, path, scales))
        gc.collect()
    return ChunkedCoremlExport(out, weights, files, scales)


def _export_chunk(ct, weights: DecoderWeights, chunk: Chunk, path: Path,
                  scales: dict) -> ChunkFile:
    module = chunk_module(weights, chunk)
    shape = weights.shape
    with torch.no_grad(), warnings.catch_warnings(), captured_console():
        warnings.simplefilter("ignore")
        program = stateful_to_mil(
            ct, module, shape.max_context, tuple(module.keys.shape),
            hidden=None if chunk.first else shape.hidden,
            output="logits" if chunk.last else "hidden_out")
        carried, dropped = _carry_weights(program, module, module.quantized, module.tables)
        save_mlprogram(ct, program, path)
    scales.update(input_scales(module.quantized))
    return ChunkFile(chunk, path, package_bytes(path), carried, dropped,
                     tuple(module.keys.shape), module.parameter_count())
