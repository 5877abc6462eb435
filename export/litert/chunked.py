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
(export.litert.blockwise_file), other packed ones as DEQUANTIZE (export.litert.weights).
export.litert.run_chunks runs them in sequence.
"""

from __future__ import annotations

import dataclasses
import gc
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from export.coreml.chunk_plan import Chunk
from export.coreml.chunked import chunk_count, chunk_path, plan_for
from export.errors import ExportError, require
from export.litert.blockwise_file import FLATBUFFER_LIMIT, carry_blockwise
from export.litert.chunk_module import LitertChunk
from export.litert.weights import carry_weights
from export.llm.chunk_files import ChunkedRecords, ChunkFileRecord
from export.llm.decoder_weights import DecoderWeights
from export.quiet import captured_console


@dataclasses.dataclass
class LitertChunkFile(ChunkFileRecord):
    mapped_loss: dict[str, float]  # layer -> relative weight error of the bf16 scales


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
        return details


def export_chunked_litert(weights: DecoderWeights, out: Path, *, chunks: int | None,
                          prefill_tokens: int,
                          progress: Callable[[str], None] | None = None) -> ChunkedLitertExport:
    """Write chunk_path(out, k) for each chunk k, freeing each chunk before the next."""
    litert_torch = require("litert_torch", "litert", "LiteRT export")
    if not 1 <= prefill_tokens <= weights.shape.max_context:
        raise ExportError(f"prefill length {prefill_tokens} must lie in "
                          f"1..{weights.shape.max_context} (the max context)")
    plan = plan_for(weights, chunk_count(weights, chunks))
    _check_sizes(weights, plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for chunk in plan:
        if progress is not None:
            progress(f"chunk {chunk.index + 1} of {chunk.count}: layers {chunk.start}.."
                     f"{chunk.stop - 1}")
        files.append(_export_chunk(litert_torch, weights, chunk,
                                   chunk_path(out, chunk.index, chunk.count), prefill_tokens))
        gc.collect()
    return ChunkedLitertExport(out, weights, files, prefill_tokens)


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


def _export_chunk(litert_torch, weights: DecoderWeights, chunk: Chunk, path: Path,
                  prefill_tokens: int) -> LitertChunkFile:
    module = LitertChunk(weights, chunk)
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
    gc.collect()
    carried = carry_blockwise(path, module.mapped)
    others = {name: (packed.dequantize().float().numpy(), packed)
              for name, packed in module.dequantized.items()}
    more, dropped = carry_weights(path, others)
    return LitertChunkFile(chunk, path, path.stat().st_size, carried + more, dropped,
                           module.cache_shape(),
                           {name: m.loss for name, m in module.mapped.items()})
