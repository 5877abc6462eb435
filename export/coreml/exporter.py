"""The "coreml" export target: LLMs as an iOS 18 ML program with a stateful key/value
cache and the artifact's packed weights as constexpr ops (export.coreml.llm), vision
models float32, float16 or palettized (export.vision). Core ML runs only on macOS, so
off it the saved package is opened and checked instead of run."""

from __future__ import annotations

from pathlib import Path

from export.options import ExportOptions
from export.registry import Exporter, register_exporter


@register_exporter("coreml")
class CoremlExporter(Exporter):
    suffix = ".mlpackage"
    runtime = "coremltools"
    sparse_note = "quantized layers keep their pruned zeros as codes"
    vision_precision_options = True  # --fp16, --palettize-bits

    def write_llm(self, artifact, out: Path, options: ExportOptions):
        from export.coreml.llm import export_llm_coreml

        return export_llm_coreml(artifact.module, out, max_context=options.max_context,
                                 quantized=artifact.quantized)

    def verify_llm(self, result, out: Path, artifact, prompt: list[int],
                   options: ExportOptions):
        from export.coreml.verify_llm import verify_coreml_llm

        return verify_coreml_llm(out, result)

    def write_vision(self, wrapped, example, out: Path, meta: dict, coreml=None) -> None:
        from export.coreml.vision import CoremlVisionOptions, write_coreml_vision

        write_coreml_vision(wrapped, example, out, meta, coreml or CoremlVisionOptions())

    def run_vision(self, path: Path, example):
        from export.coreml.vision import describe_coreml_vision

        return describe_coreml_vision(path)
