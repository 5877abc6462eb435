"""A vision bundle (export.vision_bundle) read back the way an app reads it: the sample
image from its raw file, fed to onnxruntime or LiteRT by the names, dtypes and shapes
the manifest lists, the outputs compared with the recorded sample outputs. This code
uses numpy and the runtime only, no model code (importing the `export` package itself
still loads torch, as it does for the LLM reader).

    error per output = max |got - recorded| / max |recorded|   (float files; "max")
                       mean |got - recorded| / max |recorded|  (int8 files; "mean")
    integer outputs (expert indices): equal or not

A fully int8 LiteRT input is quantized with the scale and zero point the manifest gives
(q = clip(round(x / scale) + zero_point)), its int8 outputs dequantized, as an app does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from export.errors import ExportError, require

VISION_KINDS = ("image-segmentation", "image-classification")
VISION_REQUIRED = ("target", "runtime", "model", "inputs", "outputs", "preprocessing",
                   "postprocessing", "sample", "files")


def sample_files(manifest: dict) -> list[str]:
    """The sample's input and output file names, as the manifest lists them."""
    sample = manifest["sample"]
    return [sample["input"]["file"], *(o["file"] for o in sample["outputs"])]


def read_raw(path: Path, dtype: str, shape: list[int]) -> np.ndarray:
    """A raw little-endian C-order array; its size must match the shape."""
    kind = np.dtype(dtype).newbyteorder("<")
    data = np.fromfile(path, dtype=kind)
    if data.size != int(np.prod(shape)):
        raise ExportError(f"{path} holds {data.size} {dtype} values, not the "
                          f"{int(np.prod(shape))} of shape {shape}: export the bundle again")
    return data.reshape(shape).astype(np.dtype(dtype))


def run_model(path: Path, manifest: dict, pixels: np.ndarray,
              threads: int | None = None) -> list[np.ndarray]:
    """The file's outputs, in the manifest's order, on `pixels` (raw 0..255 float32)."""
    inputs, outputs = manifest["inputs"], manifest["outputs"]
    runtime = manifest["runtime"]
    if runtime == "onnxruntime":
        ort = require("onnxruntime", "onnx", "running ONNX bundles")
        settings = ort.SessionOptions()
        if threads:
            settings.intra_op_num_threads = threads
        session = ort.InferenceSession(os.fspath(path), settings,
                                       providers=["CPUExecutionProvider"])
        feed = {inputs[0]["name"]: pixels.astype(inputs[0]["dtype"])}
        return session.run([o["name"] for o in outputs], feed)
    if runtime == "ai-edge-litert":
        require("ai_edge_litert", "litert", "running LiteRT bundles")
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=os.fspath(path), num_threads=threads)
        runner = interpreter.get_signature_runner(manifest["model"]["signature"])
        got = runner(**{inputs[0]["name"]: _quantize(pixels, inputs[0])})
        return [_dequantize(got[o["name"]], o) for o in outputs]
    raise ExportError(f"the bundle names runtime {runtime!r}; this reader runs onnxruntime "
                      "and ai-edge-litert bundles")


def _quantize(values: np.ndarray, tensor: dict) -> np.ndarray:
    quant = tensor.get("quantization")
    if quant is None:
        return values.astype(tensor["dtype"])
    info = np.iinfo(np.dtype(tensor["dtype"]))
    codes = np.round(values / quant["scale"]) + quant["zero_point"]
    return np.clip(codes, info.min, info.max).astype(tensor["dtype"])


def _dequantize(values: np.ndarray, tensor: dict) -> np.ndarray:
    quant = tensor.get("quantization")
    if quant is None:
        return np.asarray(values)
    return ((np.asarray(values, np.float32) - quant["zero_point"])
            * quant["scale"]).astype(np.float32)


def check_sample(path: Path, manifest: dict, threads: int | None = None) -> dict:
    """{"ok", "rtol", "judged_on", "outputs": [{"role", "name", "error"} or "equal"]}:
    the sample run on the bundle's file against the recorded outputs."""
    sample = manifest["sample"]
    pixels = read_raw(path / sample["input"]["file"], sample["input"]["dtype"],
                      sample["input"]["shape"])
    got = run_model(path / manifest["model"]["file"], manifest, pixels, threads)
    return compare(path, manifest, got)


def compare(path: Path, manifest: dict, got: list) -> dict:
    """A runtime's outputs (`got`, in the manifest's order) against the recorded sample:
    check_sample's result."""
    sample = manifest["sample"]
    rtol, judged = float(sample["rtol"]), sample.get("judged_on", "max")
    results = []
    for recorded, value in zip(sample["outputs"], got, strict=True):
        want = read_raw(path / recorded["file"], recorded["dtype"], recorded["shape"])
        value = np.asarray(value)
        entry = {"role": recorded["role"], "name": recorded["name"]}
        if np.dtype(recorded["dtype"]).kind in "iu":
            entry["equal"] = bool(value.shape == want.shape and np.array_equal(value, want))
            entry["passed"] = entry["equal"]
        else:
            entry["error"] = relative_error(value, want, judged)
            entry["passed"] = entry["error"] <= rtol
        results.append(entry)
    return {"ok": all(r["passed"] for r in results), "rtol": rtol, "judged_on": judged,
            "outputs": results}


def relative_error(got: np.ndarray, want: np.ndarray, judged_on: str) -> float:
    """max (or mean) |got - want| / max |want|; inf when the shapes differ."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    diff = np.abs(got - want)
    error = float(diff.mean() if judged_on == "mean" else diff.max()) if diff.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    return error / scale if scale > 0 else error


def describe(result: dict) -> str:
    """One line per output for a terminal."""
    lines = []
    for o in result["outputs"]:
        how = (("equal" if o["equal"] else "DIFFERENT") if "equal" in o
               else f"{result['judged_on']} relative error {o['error']:.3g}")
        lines.append(f"{o['role']} ({o['name']}): {how}")
    verdict = "ok" if result["ok"] else "MISMATCH"
    return f"{verdict} (rtol {result['rtol']:g}): " + "; ".join(lines)
