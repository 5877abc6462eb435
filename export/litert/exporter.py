"""The "tflite" export target (LiteRT): LLMs with prefill and decode signatures and the
artifact's integer codes as weight-only DEQUANTIZE (export.litert.llm), palettes mapped
to blockwise affine codes (export.litert.palette_map), the table and head quantized at
export with --embedding-bits (export.litert.tables); vision models float or static int8
(export.vision); run by ai-edge-litert in a child process, since the interpreter can
abort the process that hosts it. A model read lazily (--engine streaming) or --chunks N
is written as consecutive files OUT_chunk1..N.tflite converted one at a time, its 4-bit
linears as int4 blockwise FCs that run without a float copy (export.litert.chunked)."""

from __future__ import annotations

from pathlib import Path

from export.errors import ExportError
from export.options import ExportOptions
from export.registry import Exporter, register_exporter


@register_exporter("tflite")
class LitertExporter(Exporter):
    suffix = ".tflite"
    runtime = "ai-edge-litert"
    quantizes_tables = True  # --embedding-bits: GATHER over int codes + DEQUANTIZE head
    maps_palettes = True  # no lookup-table op: palettes become affine codes (--palette-map-bits)
    streams = True  # chunk by chunk from a lazily read checkpoint (export.litert.chunked)
    writes_chunks = True  # --chunks
    # LoRA adapters as float32 FULLY_CONNECTED side branches: the one-file decoder's
    # (export.llm.decoder.ExportLinear) and every chunk's (export.litert.blockwise), from
    # memory or from a lazily read checkpoint
    carries_lora = streams_lora = True
    sparse_note = "litert-torch writes dense weights"
    vision_layout = "NHWC"  # LiteRT's native layout: no transposes around its convolutions
    vision_int8 = ("static int8: weights per channel, activations per tensor, int8 input and "
                   "output")

    def companions(self, out: Path) -> list[Path]:
        from export.coreml.chunked import chunk_siblings

        return chunk_siblings(out)

    def write_llm(self, artifact, out: Path, options: ExportOptions):
        from export.llm.streamed import StreamedArtifact

        if isinstance(artifact, StreamedArtifact) or options.chunks is not None:
            return _write_chunks(artifact, out, options)
        for flag, value in (("--outlier-channels", options.outlier_channels),
                            ("--int8-slice", options.int8_slice)):
            if value is not None:
                raise ExportError(f"{flag} is for the chunked tflite export (--chunks or "
                                  "--engine streaming), whose int4 FCs take int8 inputs; the "
                                  f"one-file export computes in float: drop {flag}")
        from export.litert.llm import export_llm_litert
        from export.litert.palette_map import mapped_layers
        from export.litert.tables import quantize_tables

        mapped = mapped_layers(artifact.quantized, options.palette_map_bits)
        if options.require_carried and mapped:  # refused before converting anything
            name, (palette, affine, loss) = next(iter(sorted(mapped.items())))
            raise ExportError(
                f"layer {name} is palettized ({palette.bits}-bit lookup table), which LiteRT "
                f"carries only mapped to int{affine.bits} affine codes (relative weight error "
                f"{loss:.3g}), not exactly (--require-carried), so nothing was written: drop "
                "--require-carried to accept the mapping, or export to onnx or coreml, "
                "which carry palettes")
        tables = None
        if options.embedding_bits:
            tables = quantize_tables(artifact.module, options.embedding_quantizer,
                                     artifact.quantized)
        return export_llm_litert(artifact.module, out, max_context=options.max_context,
                                 prefill_tokens=min(options.prefill_tokens,
                                                    options.max_context),
                                 quantized=artifact.quantized, tables=tables, mapped=mapped)

    def verify_llm(self, result, out: Path, artifact, prompt: list[int],
                   options: ExportOptions):
        from export.litert.chunked import ChunkedLitertExport

        if isinstance(result, ChunkedLitertExport):
            from export.litert.verify_chunks import verify_chunked_litert

            return verify_chunked_litert(result, artifact, prompt, options.new_tokens)
        from export.litert.verify_llm import verify_llm_litert

        return verify_llm_litert(out, artifact.module, prompt, options.new_tokens,
                                 result.decoder.shape.max_context, result.reference,
                                 result.palettes)

    def prepare_vision(self, module):
        from export.portrait import for_litert

        return for_litert(module)

    def write_vision(self, wrapped, example, out: Path, meta: dict, coreml=None) -> None:
        from export.litert.vision import write_litert_vision

        write_litert_vision(wrapped, example, out, meta)

    def quantize_vision(self, float_file: Path, out: Path, samples: list) -> None:
        from export.litert.static_int8 import quantize_static_int8

        quantize_static_int8(float_file, out, samples)

    def run_vision(self, path: Path, example):
        from export.litert.vision import run_litert_vision

        return run_litert_vision(path, example)


def _write_chunks(artifact, out: Path, options: ExportOptions):
    from export.litert.blockwise import INT8_SLICE
    from export.litert.chunked import export_chunked_litert
    from export.litert.int8_outliers import OUTLIER_CHANNELS
    from export.llm.streamed import StreamedArtifact

    if isinstance(artifact, StreamedArtifact):
        from export.llm.lazy_weights import LazyDecoderWeights

        weights = LazyDecoderWeights(artifact.lazy, options.max_context)
    else:
        from export.llm.decoder_weights import ModuleDecoderWeights

        weights = ModuleDecoderWeights(artifact.module, options.max_context,
                                       artifact.quantized)
    calibration = ([list(ids)[:options.max_context]
                    for ids in options.calibration(artifact.tokenizer)]
                   if options.calibration is not None else [])
    return export_chunked_litert(weights, out, chunks=options.chunks,
                                 prefill_tokens=min(options.prefill_tokens,
                                                    options.max_context),
                                 progress=None if options.quiet else print,
                                 calibration=calibration,
                                 outlier_channels=(OUTLIER_CHANNELS
                                                   if options.outlier_channels is None
                                                   else options.outlier_channels),
                                 slice_width=(INT8_SLICE if options.int8_slice is None
                                              else options.int8_slice),
                                 table_quantizer=(options.embedding_quantizer
                                                  if options.embedding_bits else None))
