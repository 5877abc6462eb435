"""The formats `toolkit export` writes: file suffix, writer, verifier and what the format
cannot carry. A new format is one entry here plus its writer under `export/`."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ExportTarget:
    suffix: str
    runtime: str
    write: Callable  # (loaded, staging path, args) -> export result
    # (result, staging path, loaded, prompt, args) -> LlmVerification, or a dict of
    # structural checks where the runtime cannot run here (Core ML)
    verify: Callable
    sparse_note: str  # why pruned zeros are stored dense, when they are


def _write_onnx(loaded, staging: Path, args: argparse.Namespace):
    from export.onnx.llm import export_llm_onnx

    return export_llm_onnx(loaded.module, staging, max_context=args.max_context,
                           quantized=loaded.quantized,
                           metadata={"edge_toolkit.source": loaded.source})


def _verify_onnx(result, staging: Path, loaded, prompt: list[int], args):
    from export.onnx.verify_llm import verify_llm_onnx

    shape = result.decoder.shape
    return verify_llm_onnx(staging, loaded.module, prompt, args.new_tokens,
                           shape.cache_shape(), shape.max_context)


def _write_tflite(loaded, staging: Path, args: argparse.Namespace):
    from export.litert.llm import export_llm_litert

    return export_llm_litert(loaded.module, staging, max_context=args.max_context,
                             prefill_tokens=min(args.prefill_tokens, args.max_context),
                             quantized=loaded.quantized)


def _verify_tflite(result, staging: Path, loaded, prompt: list[int], args):
    from export.litert.verify_llm import verify_llm_litert

    return verify_llm_litert(staging, loaded.module, prompt, args.new_tokens,
                             result.decoder.shape.max_context)


def _write_coreml(loaded, staging: Path, args: argparse.Namespace):
    from export.coreml.llm import export_llm_coreml

    return export_llm_coreml(loaded.module, staging, max_context=args.max_context,
                             quantized=loaded.quantized)


def _verify_coreml(result, staging: Path, loaded, prompt: list[int], args):
    from export.coreml.verify_llm import verify_coreml_llm

    return verify_coreml_llm(staging, result)


TARGETS = {
    "onnx": ExportTarget(".onnx", "onnxruntime", _write_onnx, _verify_onnx,
                         "ONNX has no sparse weight format onnxruntime runs"),
    "tflite": ExportTarget(".tflite", "ai-edge-litert", _write_tflite, _verify_tflite,
                           "litert-torch writes dense weights"),
    # Core ML runs only on macOS: off it, the saved model is opened and checked instead.
    "coreml": ExportTarget(".mlpackage", "coremltools", _write_coreml, _verify_coreml,
                           "quantized layers keep their pruned zeros as codes"),
}
