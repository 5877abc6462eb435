"""The "coreml" export target: LLMs as an iOS 18 ML program with a stateful key/value
cache and the artifact's packed weights as constexpr ops (export.coreml.llm), or, for a
model read lazily or with --chunks, as consecutive packages converted one at a time
(export.coreml.chunked); vision models float32, float16 or palettized (export.vision).
Core ML runs only on macOS, so off it the saved packages are opened and checked instead
of run."""

from __future__ import annotations

from pathlib import Path

from export.llm.streamed import StreamedArtifact
from export.options import ExportOptions
from export.registry import Exporter, register_exporter


@register_exporter("coreml")
class CoremlExporter(Exporter):
    suffix = ".mlpackage"
    runtime = "coremltools"
    sparse_note = "quantized layers keep their pruned zeros as codes"
    vision_precision_options = True  # --fp16, --palettize-bits
    streams = True  # chunk by chunk from a lazily read checkpoint (export.coreml.chunked)
    quantizes_tables = True  # --embedding-bits: constexpr_blockwise_shift_scale table/head
    writes_chunks = True  # --chunks
    # LoRA adapters as float16 matmul side branches (export.llm.decoder.ExportLinear), in
    # the one-package model and in every chunk
    carries_lora = streams_lora = True

    def companions(self, out: Path) -> list[Path]:
        from export.coreml.chunked import chunk_siblings

        return chunk_siblings(out)

    def write_llm(self, artifact, out: Path, options: ExportOptions):
        quantizer = options.embedding_quantizer if options.embedding_bits else None
        if isinstance(artifact, StreamedArtifact) or options.chunks is not None:
            from export.coreml.chunked import export_chunked_coreml

            if isinstance(artifact, StreamedArtifact):
                from export.llm.lazy_weights import LazyDecoderWeights

                weights = LazyDecoderWeights(artifact.lazy, options.max_context)
            else:
                from export.llm.decoder_weights import ModuleDecoderWeights

                weights = ModuleDecoderWeights(artifact.module, options.max_context,
                                               artifact.quantized)
            progress = None if options.quiet else print
            return export_chunked_coreml(weights, out, chunks=options.chunks,
                                         table_quantizer=quantizer, progress=progress)
        from export.coreml.llm import export_llm_coreml

        return export_llm_coreml(artifact.module, out, max_context=options.max_context,
                                 quantized=artifact.quantized, table_quantizer=quantizer)

    def verify_llm(self, result, out: Path, artifact, prompt: list[int],
                   options: ExportOptions):
        from export.coreml.chunked import ChunkedCoremlExport

        if isinstance(result, ChunkedCoremlExport):
            from export.coreml.verify_chunks import verify_chunked_coreml

            return verify_chunked_coreml(result)
        from export.coreml.verify_llm import verify_coreml_llm

        return verify_coreml_llm(out, result)

    def write_vision(self, wrapped, example, out: Path, meta: dict, coreml=None) -> None:
        from export.coreml.vision import CoremlVisionOptions, write_coreml_vision

        write_coreml_vision(wrapped, example, out, meta, coreml or CoremlVisionOptions())

    def run_vision(self, path: Path, example):
        from export.coreml.vision import describe_coreml_vision

        return describe_coreml_vision(path)
