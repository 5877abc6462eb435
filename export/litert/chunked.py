"""`export_chunked_litert`: the decoder as N .tflite files run one after another, each
converted on its own by litert-torch from a chunk module holding only its layers
(export.litert.chunk_module), so converting a 3B model holds about one chunk.

    OUT_chunk1.tflite   prefill/decode(input_ids, position, keys, values) -> hidden, keys', values'
    OUT_chunkK.tflite   prefill/decode(hidden, position, keys, values) -> hidden or logits, ...
    keys/values of chunk k: [layers of chunk k, kv_heads, max_context, head_dim] float32

Names and the layer plan are the Core ML chunked export's (export.coreml.chunked,
export.coreml.chunk_plan: chunks balanced by parameters, each below 1.5 GB of float32
weights when the count is automatic, which also keeps the converter's float file under
the 2 GB flatbuffer limit). 4-bit linears are carried as int4 blockwise FCs
(export.litert.blockwise_file), one per input slice, with the outlier input channels
found on calibration tokens split off (export.litert.int8_outliers); other packed ones
as DEQUANTIZE (export.litert.weights); LoRA adapters as float side branches.
export.litert.run_chunks runs them in sequence.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from export.coreml.chunk_plan import Chunk
from export.coreml.chunked import chunk_count, chunk_path, plan_for
from export.errors import ExportError, require
from export.litert.blockwise import INT8_SLICE
from export.litert.blockwise_file import FLATBUFFER_LIMIT, carry_blockwise
from export.litert.chunk_module import LitertChunk
from export.litert.int8_outliers import OUTLIER_CHANNELS, choose_outliers, input_peaks
from export.litert.weights import carry_weights
from export.llm.chunk_files import ChunkedRecords, ChunkFileRecord
from export.llm.decoder_weights import DecoderWeights
from export.quiet import captured_console


@dataclasses.dataclass
class LitertChunkFile(ChunkFileRecord):
    mapped_loss: dict[str, float]  # layer -> relative weight error of the bf16 scales
    # layer -> input channels split off its int8 FC (export.litert.int8_outliers)
    outliers: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    outlier_bytes: int = 0  # float32 columns and channel masks of those splits
    slice_width: int = INT8_SLICE  # inputs per int8 scale (export.litert.blockwise)


@dataclasses.dataclass
class ChunkedLitertExport(ChunkedRecords):
    """What llm_job reads of an export (path, decoder, carried, dropped) plus the chunk
    files; `decoder` is the DecoderWeights, read again by the verification."""

    path: Path
    decoder: DecoderWeights
    chunks: list[LitertChunkFile]
    prefill_tokens: int

    @property
    def files(self) -> list[Path]:
        return [c.path for c in self.chunks]

    @property
    def extra_details(self) -> dict:
        losses = {name: round(loss, 6) for c in self.chunks
                  for name, loss in c.mapped_loss.items()}
        details = {"chunks": [c.describe() for c in self.chunks]}
        if losses:
            details["bf16_scale_loss"] = {"max": max(losses.values()), "layers": losses}
        outliers = {name: channels for c in self.chunks
                    for name, channels in c.outliers.items() if channels}
        if any(c.mapped_loss for c in self.chunks):
            details["int8_input_outliers"] = {
                "slice_width": self.chunks[0].slice_width,
                "layers": len(outliers),
                "channels": sum(len(v) for v in outliers.values()),
                "float_bytes": sum(c.outlier_bytes for c in self.chunks),
                "by_layer": outliers}
        return details


def export_chunked_litert(weights: DecoderWeights, out: Path, *, chunks: int | None,
                          prefill_tokens: int,
                          progress: Callable[[str], None] | None = None,
                          calibration: Sequence[Sequence[int]] = (),
                          outlier_channels: int = OUTLIER_CHANNELS,
                          slice_width: int = INT8_SLICE,
                          table_quantizer: Callable | None = None) -> ChunkedLitertExport:
    """Write chunk_path(out, k) for each chunk k, freeing each chunk before the next.

    `calibration` (token id sequences) is run through each chunk in float before it is
    converted, to find the input channels its int8 FCs leave out (at most
    `outlier_channels` per FC; export.litert.int8_outliers); none: no split. Each 4-bit
    linear is one int4 FC per `slice_width` inputs (export.litert.blockwise).
    `table_quantizer` (--embedding-bits): the embedding table and an untied float head
    quantized first (DecoderWeights.quantize_tables): a GATHER of the codes for the
    lookup (export.litert.tables); the head as int4 blockwise FCs at 4 bits
    (export.litert.chunk_module), else a DEQUANTIZE of its codes."""
    litert_torch = require("litert_torch", "litert", "LiteRT export")
    if not 1 <= prefill_tokens <= weights.shape.max_context:
        raise ExportError(f"prefill length {prefill_tokens} must lie in "
                          f"1..{weights.shape.max_context} (the max context)")
    if table_quantizer is not None:
        weights.quantize_tables(table_quantizer)
    plan = plan_for(weights, chunk_count(weights, chunks))
    _check_sizes(weights, plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = []
    hidden = [torch.tensor([list(ids)]) for ids in calibration]
    for chunk in plan:
        if progress is not None:
            progress(f"chunk {chunk.index + 1} of {chunk.count}: layers {chunk.start}.."
                     f"{chunk.stop - 1}")
        module = LitertChunk(weights, chunk, slice_width=slice_width)
        if hidden and outlier_channels > 0:
            hidden = _split_outliers(module, hidden, outlier_channels)
        files.append(_export_chunk(litert_torch, module,
                                   chunk_path(out, chunk.index, chunk.count), prefill_tokens))
        del module
        release_freed_memory()
    return ChunkedLitertExport(out, weights, files, prefill_tokens)


def release_freed_memory() -> None:
    """Collect, then hand the heap's free pages back to the system (glibc's malloc_trim).
    A chunk's weight slices (export.litert.blockwise) are each below glibc's mmap
    threshold, so they live in the heap, and freeing the chunk leaves their pages
    resident, so every chunk's conversion stacked on the last one's leftovers. On afm-3b
    the trim took the export's peak RSS from 10.39 to 9.69 GB written alone, and from
    10.72 to 9.56 GB with verification (BENCHMARKS.md, llm-decode and llm-scale). A no-op
    without glibc."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _check_sizes(weights: DecoderWeights, plan: list[Chunk]) -> None:
    """Refuse, before converting anything, a chunk whose float32 weights (what the
    converter writes before the codes go in) would not fit one flatbuffer."""
    rows, width = weights.embedding_shape()
    names = weights.block_linear_names(0)
    per_layer = sum(int(torch.Size(weights.module.get_submodule(n).weight.shape).numel())
                    for n in names.values())
    for chunk in plan:
        params = len(chunk.layers) * per_layer
        params += rows * width * (chunk.first + (chunk.last and weights.tied))
        if 4 * params >= FLATBUFFER_LIMIT:
            raise ExportError(f"chunk {chunk.index + 1} of {chunk.count} would hold "
                              f"{4 * params / 1e9:.2f} GB of float32 weights, over LiteRT's "
                              f"2 GB flatbuffer: pass a larger --chunks (or none)")


def _split_outliers(module: LitertChunk, inputs: list[torch.Tensor],
                    count: int) -> list[torch.Tensor]:
    """Calibrate `module`'s outlier channels on `inputs` (float compute) and split them
    off; returns its outputs, the next chunk's calibration inputs."""
    outputs = []

    def run(x):
        keys = torch.zeros(module.cache_shape())
        outputs.append(module(x, torch.zeros(1, dtype=torch.long), keys, keys.clone())[0])

    peaks = input_peaks(module, module.blockwise, inputs, run)
    module.set_outliers({name: choose_outliers(peak, count) for name, peak in peaks.items()})
    return outputs


def _export_chunk(litert_torch, module: LitertChunk, path: Path,
                  prefill_tokens: int) -> LitertChunkFile:
    chunk = module.chunk
    try:
        with torch.no_grad(), warnings.catch_warnings(), captured_console():
            warnings.simplefilter("ignore")
            edge = (litert_torch.signature("prefill", module,
                                           module.example_inputs(prefill_tokens))
                    .signature("decode", module, module.example_inputs(1)).convert())
            edge.export(str(path))
            del edge
    except Exception as exc:
        raise ExportError(f"litert-torch could not convert chunk {chunk.index + 1}: "
                          f"{str(exc).splitlines()[0][:300]}") from exc
    release_freed_memory()  # the converter's copies, before the file is read back
    carried = carry_blockwise(path, {name: m.mapped_parts
                                     for name, m in module.blockwise.items()})
    others = {name: (packed.dequantize().float().numpy(), packed)
              for name, packed in module.dequantized.items()}
    more, dropped = carry_weights(path, {**others, **module.tables})
    return LitertChunkFile(chunk, path, path.stat().st_size, carried + more, dropped,
                           module.cache_shape(),
                           {name: m.loss for name, m in module.mapped.items()},
                           {name: m.outlier_channels for name, m in module.blockwise.items()
                            if m.outlier_channels},
                           sum(4 * (m.outlier_weight.numel() + m.keep.numel())
                               for m in module.blockwise.values() if m.keep is not None),
                           module.slice_width)
