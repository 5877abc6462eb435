"""Any vision `nn.Module` with a fixed input shape, to ONNX, LiteRT or Core ML.

The file takes raw pixels in [0, 255] in the layout its runtime prefers (LiteRT: NHWC;
ONNX and Core ML: NCHW unless asked otherwise): the layout change and the normalisation
x' = (x / 255 - mean) / std are folded into the graph, and the file's metadata says so
where the format has metadata (ONNX metadata_props, Core ML user-defined metadata).
Verification runs the file on its runtime (LiteRT in a child process) on the same input
as PyTorch; Core ML, which runs only on macOS, is opened and its I/O checked instead.

LiteRT and ONNX can instead be written int8 (static quantization, calibrated on images
the caller gives): LiteRT fully int8 (export.litert.static_int8), ONNX as QuantizeLinear /
DequantizeLinear pairs with float input and output (export.onnx.static_int8). Core ML
takes float16 compute and palettized weights instead (export.coreml.vision). The float
file's size is kept for the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.coreml.vision import CoremlVisionOptions, write_coreml_vision
from export.errors import ExportError, require
from export.op_locator import locate_op
from export.quiet import captured_console
from export.verify import OutputAgreement, agreement

DEFAULT_LAYOUT = {"onnx": "NCHW", "tflite": "NHWC", "coreml": "NCHW"}
INT8_TARGETS = ("tflite", "onnx")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def describe(self, layout: str) -> dict:
        return {"input": f"raw pixels 0..255, {layout}", "folded": "(x / 255 - mean) / std",
                "mean": list(self.mean), "std": list(self.std)}


class PixelInput(nn.Module):
    """module((x / 255 - mean) / std) with x in `layout`; the module itself takes NCHW."""

    def __init__(self, module: nn.Module, layout: str, preprocess: Preprocess):
        super().__init__()
        if layout not in ("NCHW", "NHWC"):
            raise ExportError(f"layout {layout!r} is not NCHW or NHWC")
        self.module, self.channels_last = module, layout == "NHWC"
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2) if self.channels_last else pixels
        return self.module((x / 255.0 - self.mean) / self.std)


@dataclasses.dataclass
class VisionExport:
    path: Path
    target: str
    layout: str
    example: torch.Tensor  # the pixel input in the file's layout
    wrapped: nn.Module
    float_bytes: int  # the float file's size (the same as the file's unless int8)
    int8: bool = False
    coreml: CoremlVisionOptions | None = None  # what the Core ML file carries


def export_vision(module: nn.Module, input_shape: tuple[int, int, int, int], target: str,
                  out: Path, *, layout: str | None = None,
                  preprocess: Preprocess = Preprocess(),
                  int8_calibration: torch.Tensor | None = None,
                  example: torch.Tensor | None = None,
                  coreml: CoremlVisionOptions | None = None) -> VisionExport:
    """`input_shape` is NCHW as the module takes it; the file's input follows `layout`.
    `int8_calibration`: raw-pixel images [N, C, H, W] (0..255); given, the LiteRT or ONNX
    file is statically quantized to int8 with ranges measured on them. `example`: the
    raw-pixel image [1, C, H, W] to trace and verify with (default: uniform noise).
    `coreml`: Core ML precision and palettization (default: float32, no palette)."""
    layout = layout or DEFAULT_LAYOUT[target]
    if int8_calibration is not None and target not in INT8_TARGETS:
        raise ExportError(f"static int8 is offered for LiteRT (tflite) and ONNX, not "
                          f"{target}: drop the calibration images, or for Core ML use "
                          "float16 or palettized weights")
    if coreml is not None and target != "coreml":
        raise ExportError(f"Core ML options (float16, palettization) do not apply to {target}")
    n, c, h, w = input_shape
    shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    from export.portrait import for_target

    wrapped = PixelInput(for_target(module.eval(), target), layout, preprocess).eval()
    if example is None:
        example = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255
    else:
        example = example.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else example
        if tuple(example.shape) != shape:
            raise ExportError(f"the example image has shape {tuple(example.shape)} in "
                              f"{layout}, expected {shape}")
    meta = {"edge_toolkit.preprocess": json.dumps(preprocess.describe(layout))}
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = {"onnx": _onnx, "tflite": _tflite,
              "coreml": lambda *a: write_coreml_vision(*a, coreml or CoremlVisionOptions())
              }[target]
    with torch.no_grad(), warnings.catch_warnings(), captured_console():
        warnings.simplefilter("ignore")
        try:
            writer(wrapped, example, out, meta)
        except ExportError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0][:300]
            where = locate_op(wrapped, (example,), first)
            if where:  # paths inside PixelInput start at .module: name the user's layers
                where = where.replace(" layer module.", " layer ").replace(
                    " layer module ", " layer (root) ")
            raise ExportError(f"{target} export failed: {first}"
                              + (f" [unsupported: {where}]" if where else "")) from exc
    float_bytes = _size(out)
    if int8_calibration is not None:
        _to_static_int8(out, int8_calibration, layout, shape, target)
    return VisionExport(out, target, layout, example, wrapped, float_bytes,
                        int8_calibration is not None,
                        (coreml or CoremlVisionOptions()) if target == "coreml" else None)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _to_static_int8(out: Path, images: torch.Tensor, layout: str, shape: tuple,
                    target: str) -> None:
    from export.litert.static_int8 import quantize_static_int8
    from export.onnx.static_int8 import quantize_qdq_int8

    if images.ndim != 4 or images.shape[1:] != torch.Size((shape[3], *shape[1:3])
                                                          if layout == "NHWC" else shape[1:]):
        raise ExportError(f"calibration images have shape {tuple(images.shape)}, expected "
                          f"[N, C, H, W] matching the model input")
    if layout == "NHWC":
        images = images.permute(0, 2, 3, 1)
    samples = [image.unsqueeze(0).float().numpy() for image in images]
    float_file = out.with_name(out.stem + ".float" + out.suffix)
    out.replace(float_file)
    try:
        quantize = quantize_static_int8 if target == "tflite" else quantize_qdq_int8
        quantize(float_file, out, samples)
    finally:
        float_file.unlink(missing_ok=True)


def _onnx(wrapped, example, out: Path, meta: dict) -> None:
    onnx = require("onnx", "onnx", "ONNX export")
    program = torch.onnx.export(wrapped, (example,), dynamo=True, external_data=False,
                                input_names=["pixels"], opset_version=21, optimize=True)
    model = program.model_proto
    for node in model.graph.node:
        # Per-node debug records (FX node, stack trace with this machine's source paths,
        # rewrite rule names): nothing a runtime reads, and about half of a small CNN's file.
        del node.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, os.fspath(out))


def _tflite(wrapped, example, out: Path, meta: dict) -> None:
    litert_torch = require("litert_torch", "litert", "LiteRT export")
    litert_torch.convert(wrapped, (example,)).export(os.fspath(out))
    from export.litert.compact import shorten_tensor_names

    shorten_tensor_names(out)  # module-path names: a third of a small CNN's file


def verify_vision(result: VisionExport) -> list[OutputAgreement] | dict:
    """Per-output agreement with PyTorch; for Core ML the I/O description instead."""
    with torch.no_grad():
        reference = result.wrapped(result.example)
    references = reference if isinstance(reference, tuple | list) else (reference,)
    if result.target == "coreml":
        import coremltools as ct

        spec = ct.models.MLModel(os.fspath(result.path), skip_model_load=True).get_spec()
        return {"inputs": [i.name for i in spec.description.input],
                "outputs": [o.name for o in spec.description.output],
                "numerics": "numerics not checked: Core ML runs only on macOS"}
    outputs = (_run_onnx if result.target == "onnx" else _run_tflite)(result)
    if len(outputs) != len(references):
        raise ExportError(f"the file has {len(outputs)} outputs, PyTorch {len(references)}")
    return [agreement(f"output{i}", got, want.numpy())
            for i, (got, want) in enumerate(zip(outputs, references, strict=True))]


def _run_onnx(result: VisionExport) -> list[np.ndarray]:
    ort = require("onnxruntime", "onnx", "running ONNX files")
    session = ort.InferenceSession(os.fspath(result.path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: result.example.numpy()})


def _run_tflite(result: VisionExport) -> list[np.ndarray]:
    from export.litert.run_model import run_in_child

    return run_in_child(result.path, [result.example.numpy()])
