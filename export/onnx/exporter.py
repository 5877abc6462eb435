"""The "onnx" export target: LLMs as one graph with an explicit key/value cache and the
artifact's packed weights as MatMulNBits / palette lookups (export.onnx.llm), vision
models with the normalisation folded in (export.vision); run by onnxruntime to verify."""

from __future__ import annotations

from pathlib import Path

from export.errors import ExportError
from export.llm.streamed import StreamedArtifact
from export.llm.table_quant import QuantizedTables
from export.options import ExportOptions
from export.registry import Exporter, register_exporter


@register_exporter("onnx")
class OnnxExporter(Exporter):
    suffix = ".onnx"
    runtime = "onnxruntime"
    sparse_note = "ONNX has no sparse weight format onnxruntime runs"
    streams = True  # export.onnx.decoder_graph writes a lazily read checkpoint
    quantizes_tables = True  # --embedding-bits: GatherBlockQuantized + MatMulNBits head
    carries_lora = True  # LoRA adapters as MatMul side branches (export.onnx.decoder_graph)
    streams_lora = True
    vision_int8 = ("static int8 QDQ: weights per channel (7-bit codes), uint8 activations per "
                   "tensor, float input and output")

    def companions(self, out: Path) -> list[Path]:
        return [out.with_name(out.name + ".data")]  # the external data file

    def write_llm(self, artifact, out: Path, options: ExportOptions):
        """Dense Llama-family decoders are written node by node (export.onnx.decoder_graph:
        one weight at a time; from a lazily read checkpoint, or from memory); mixtures of
        experts are traced with torch.onnx (export.onnx.llm)."""
        from export.llm.moe_mlp import is_moe_mlp
        from export.onnx.decoder_graph import write_decoder_onnx
        from export.onnx.llm import EXTERNAL_DATA_BYTES, export_llm_onnx

        metadata = {"edge_toolkit.source": artifact.source}
        if isinstance(artifact, StreamedArtifact):
            if options.kv_cache_dtype == "int8":
                raise ExportError("--kv-cache int8 calibrates its scales on the model in "
                                  "memory, which the streaming engine does not hold: use "
                                  "--kv-cache float16, or --engine memory")
            from export.llm.lazy_weights import LazyDecoderWeights

            weights = LazyDecoderWeights(artifact.lazy, options.max_context)
            _quantize_tables(weights, options)
            return write_decoder_onnx(weights, out, metadata, **_graph_options(options))
        blocks = _blocks(artifact.module)
        if blocks is not None and not is_moe_mlp(blocks[0].mlp):
            from export.llm.decoder_weights import ModuleDecoderWeights

            weights = ModuleDecoderWeights(artifact.module, options.max_context,
                                           artifact.quantized)
            _quantize_tables(weights, options)
            if options.kv_cache_dtype == "int8":
                weights.kv_scales = _kv_scales(artifact, weights, options)
            return write_decoder_onnx(weights, out, metadata,
                                      external=weights.float32_bytes() > EXTERNAL_DATA_BYTES,
                                      **_graph_options(options))
        if options.embedding_bits:
            raise ExportError("--embedding-bits is not carried for mixture-of-experts "
                              "models yet: export without it")
        if options.onnx_attention == "fused" or options.kv_cache_dtype != "float32":
            raise ExportError("mixture-of-experts models are exported with the standard "
                              "attention and a float32 cache: drop --onnx-attention fused "
                              "and --kv-cache")
        return export_llm_onnx(artifact.module, out, max_context=options.max_context,
                               quantized=artifact.quantized, metadata=metadata,
                               accuracy_level=_graph_options(options)["accuracy_level"])

    def verify_llm(self, result, out: Path, artifact, prompt: list[int],
                   options: ExportOptions):
        from export.onnx.accuracy_choice import verify_choosing_level
        from export.onnx.verify_llm import verify_llm_onnx, verify_streamed_llm_onnx

        shape = result.decoder.shape
        # Tables quantized at export: the reference computes with the same values.
        tables = getattr(result.decoder, "tables", None) or QuantizedTables({})

        def verify():
            if isinstance(artifact, StreamedArtifact):
                return verify_streamed_llm_onnx(out, artifact.lazy, prompt, options.new_tokens,
                                                shape.cache_shape(), shape.max_context, tables)
            with tables.swapped_into(artifact.module):
                return verify_llm_onnx(out, artifact.module, prompt, options.new_tokens,
                                       shape.cache_shape(), shape.max_context)
        has_nbits = any(r.carried_as.startswith("MatMulNBits") for r in result.carried)
        return verify_choosing_level(verify, out, options, has_nbits)

    def write_vision(self, wrapped, example, out: Path, meta: dict, coreml=None) -> None:
        from export.onnx.vision import write_onnx_vision

        write_onnx_vision(wrapped, example, out, meta)

    def quantize_vision(self, float_file: Path, out: Path, samples: list) -> None:
        from export.onnx.static_int8 import quantize_qdq_int8

        quantize_qdq_int8(float_file, out, samples)

    def run_vision(self, path: Path, example):
        from export.onnx.vision import run_onnx_vision

        return run_onnx_vision(path, example)


def _graph_options(options: ExportOptions) -> dict:
    from export.onnx.accuracy_choice import written_level

    return {"accuracy_level": written_level(options), "attention": options.onnx_attention,
            "kv_cache_dtype": options.kv_cache_dtype}


def _kv_scales(artifact, weights, options: ExportOptions):
    """The int8 cache's per-channel scales (export.llm.kv_scales), measured on the caller's
    calibration windows (`options.calibration`; toolkit: Wikipedia) with the model as the
    file computes it, tables quantized at export included."""
    import contextlib

    import torch

    from export.llm.kv_scales import measure_kv_scales

    if options.calibration is None:
        raise ExportError("--kv-cache int8 needs calibration text to measure its scales; "
                          "export through `toolkit export`, which supplies it")
    windows = [torch.tensor(ids, dtype=torch.long)
               for ids in options.calibration(artifact.tokenizer)]
    tables = getattr(weights, "tables", None)
    with tables.swapped_into(artifact.module) if tables else contextlib.nullcontext():
        return measure_kv_scales(artifact.module, windows)


def _quantize_tables(weights, options: ExportOptions) -> None:
    if options.embedding_bits:
        weights.tables = weights.quantize_tables(options.embedding_quantizer)


def _blocks(module):
    """The decoder blocks of `module`, None when it has no Llama-style layout."""
    from models.adapter import decoder_layout
    from models.errors import ModelError

    try:
        blocks = decoder_layout(module).blocks
    except ModelError:
        return None
    return blocks if len(blocks) and hasattr(blocks[0], "mlp") else None
