"""The "tflite" export target (LiteRT): LLMs with prefill and decode signatures and the
artifact's integer codes as weight-only DEQUANTIZE (export.litert.llm), vision models
float or static int8 (export.vision); run by ai-edge-litert in a child process, since
the interpreter can abort the process that hosts it."""

from __future__ import annotations

from pathlib import Path

from export.options import ExportOptions
from export.registry import Exporter, register_exporter


@register_exporter("tflite")
class LitertExporter(Exporter):
    suffix = ".tflite"
    runtime = "ai-edge-litert"
    sparse_note = "litert-torch writes dense weights"

    def write_llm(self, artifact, out: Path, options: ExportOptions):
        from export.litert.llm import export_llm_litert

        return export_llm_litert(artifact.module, out, max_context=options.max_context,
                                 prefill_tokens=min(options.prefill_tokens,
                                                    options.max_context),
                                 quantized=artifact.quantized)

    def verify_llm(self, result, out: Path, artifact, prompt: list[int],
                   options: ExportOptions):
        from export.litert.verify_llm import verify_llm_litert

        return verify_llm_litert(out, artifact.module, prompt, options.new_tokens,
                                 result.decoder.shape.max_context)
