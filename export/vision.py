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
import warnings
from pathlib import Path

import torch
from torch import nn

from export.coreml.vision import CoremlVisionOptions
from export.errors import ExportError
from export.op_locator import locate_op
from export.quiet import captured_console
from export.registry import exporter_names, get_exporter
from export.verify import OutputAgreement, agreement


def int8_targets() -> list[str]:
    """Targets whose exporter writes static int8 vision files."""
    return [t for t in exporter_names() if get_exporter(t).vision_int8]


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
    exporter = get_exporter(target)
    layout = layout or exporter.vision_layout
    if int8_calibration is not None and not exporter.vision_int8:
        raise ExportError(f"static int8 is offered for {' and '.join(int8_targets())}, not "
                          f"{target}: drop the calibration images, or for Core ML use "
                          "float16 or palettized weights")
    if coreml is not None and not exporter.vision_precision_options:
        raise ExportError(f"Core ML options (float16, palettization) do not apply to {target}")
    n, c, h, w = input_shape
    shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    wrapped = PixelInput(exporter.prepare_vision(module.eval()), layout, preprocess).eval()
    if example is None:
        example = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255
    else:
        example = example.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else example
        if tuple(example.shape) != shape:
            raise ExportError(f"the example image has shape {tuple(example.shape)} in "
                              f"{layout}, expected {shape}")
    meta = {"edge_toolkit.preprocess": json.dumps(preprocess.describe(layout))}
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), captured_console():
        warnings.simplefilter("ignore")
        try:
            exporter.write_vision(wrapped, example, out, meta, coreml)
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
        _to_static_int8(out, int8_calibration, layout, shape, exporter)
    precision = (coreml or CoremlVisionOptions()) if exporter.vision_precision_options else None
    return VisionExport(out, target, layout, example, wrapped, float_bytes,
                        int8_calibration is not None, precision)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _to_static_int8(out: Path, images: torch.Tensor, layout: str, shape: tuple,
                    exporter) -> None:
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
        exporter.quantize_vision(float_file, out, samples)
    finally:
        float_file.unlink(missing_ok=True)


def verify_vision(result: VisionExport) -> list[OutputAgreement] | dict:
    """Per-output agreement with PyTorch; for Core ML the I/O description instead."""
    outputs = get_exporter(result.target).run_vision(result.path, result.example)
    if isinstance(outputs, dict):  # a runtime that cannot run here: what could be checked
        return outputs
    with torch.no_grad():
        reference = result.wrapped(result.example)
    references = reference if isinstance(reference, tuple | list) else (reference,)
    if len(outputs) != len(references):
        raise ExportError(f"the file has {len(outputs)} outputs, PyTorch {len(references)}")
    return [agreement(f"output{i}", got, want.numpy())
            for i, (got, want) in enumerate(zip(outputs, references, strict=True))]
