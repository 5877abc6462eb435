"""Python's side of the web app's tests: the same files run in onnxruntime and LiteRT
(ai_edge_litert) on the inputs the page fed, the error measure the bundles' samples use,
and small PNG pictures of exact model sizes (no resampling in the page, so its
preprocessing can be compared value by value)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (the bundles' sample measure)."""
    actual = np.asarray(actual, dtype=np.float64).ravel()
    expected = np.asarray(expected, dtype=np.float64).ravel()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual - expected).max()) / scale


def run_onnx(path: Path, pixels: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: pixels})


def run_litert(path: Path, pixels: np.ndarray) -> list[np.ndarray]:
    """Outputs in the signature's order (output_0, output_1, ..) when the file has a
    signature, else in the interpreter's output order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    if signatures:
        key = next(iter(signatures))
        runner = interpreter.get_signature_runner(key)
        [name] = signatures[key]["inputs"]
        out = runner(**{name: pixels})
        return [out[k] for k in sorted(out, key=_output_order)]
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def _output_order(name: str):
    tail = name.rsplit("_", 1)[-1]
    return (0, int(tail)) if tail.isdigit() else (1, name)


def run_bundle(bundle: Path, pixels: np.ndarray) -> list[np.ndarray]:
    """The bundle's model on float32 `pixels` in its own runtime, outputs in manifest order."""
    described = manifest(bundle)
    path = bundle / described["model"]["file"]
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    return (run_onnx if described["target"] == "onnx" else run_litert)(path, pixels)


def sample(bundle: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sample input, {role: recorded output}) from the bundle's raw files."""
    section = manifest(bundle)["sample"]
    pixels = np.fromfile(bundle / section["input"]["file"], dtype="<f4").reshape(
        section["input"]["shape"])
    outputs = {}
    for o in section["outputs"]:
        dtype = np.dtype(o["dtype"]).newbyteorder("<")
        outputs[o["role"]] = np.fromfile(bundle / o["file"], dtype=dtype).reshape(o["shape"])
    return pixels, outputs


def picture(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Writes a smooth RGB PNG of `width` x `height` (a gradient plus a bright disc, like a
    subject on a background) and returns its pixels [H, W, 3] uint8."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    base = np.stack([40 + 150 * x / max(1, width - 1), 60 + 120 * y / max(1, height - 1),
                     np.full_like(x, 90)], axis=-1)
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    r = min(width, height) / 3
    inside = ((y - cy) ** 2 + (x - cx) ** 2) < r * r
    base[inside] = [230, 200, 180]
    pixels = np.clip(np.round(base), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return pixels


def layout_pixels(rgb: np.ndarray, preprocessing: dict) -> np.ndarray:
    """[H, W, 3] uint8 -> the file's float32 input (raw 0..255; NCHW or NHWC; one channel
    as BT.601 luma), as the manifest's preprocessing section describes it."""
    values = rgb.astype(np.float32)
    if preprocessing["channels"] == 1:
        weights = np.asarray(preprocessing["grayscale"]["weights_rgb"], dtype=np.float32)
        values = (values * weights).sum(-1, keepdims=True)
    batch = values[None]
    return batch.transpose(0, 3, 1, 2) if preprocessing["layout"] == "NCHW" else batch
