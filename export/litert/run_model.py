"""Run a .tflite model's default signature on saved float inputs, meant for a child
process (the LiteRT interpreter can abort the whole process). Integer inputs of a fully
quantized model are quantized with the file's own scale and zero point, integer outputs
dequantized, as an app would. A file without signatures (another converter's) runs on
its input and output tensors. Inputs with more rows than the file's batch of 1 (a test
set) run one row at a time and the outputs are stacked.

    python -m export.litert.run_model MODEL.tflite --inputs IN.npz --out OUT.npz

`run_in_child(path, arrays)` does that from Python and returns the outputs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from export.errors import ExportError


def run_in_child(path: Path, arrays: list[np.ndarray], threads: int | None = None
                 ) -> list[np.ndarray]:
    """The file's outputs (sorted by name) on `arrays`, computed in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inputs, **{f"arg{i}": a for i, a in enumerate(arrays)})
        extra = [] if threads is None else ["--threads", str(threads)]
        child = subprocess.run(
            [sys.executable, "-m", "export.litert.run_model", child_path(path),
             "--inputs", child_path(inputs), "--out", child_path(outputs), *extra],
            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
        if child.returncode != 0:
            last = (child.stderr.strip().splitlines() or ["no message"])[-1][:300]
            raise ExportError(f"the LiteRT interpreter failed on {Path(path).name} (exit "
                              f"code {child.returncode}): {last}")
        data = np.load(outputs)
        return [data[f"out{i}"] for i in range(len(data.files))]


def child_path(path: Path | str) -> str:
    """A path the child can open: it runs in the repository root (to import `export`),
    not the caller's working directory, so a relative path would name another file."""
    return os.path.abspath(os.fspath(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from ai_edge_litert.interpreter import Interpreter

    runner = DefaultRunner(Interpreter(model_path=args.model, num_threads=args.threads))
    data = np.load(args.inputs)
    arrays = [data[f"arg{i}"] for i in range(len(runner.inputs))]
    rows = _rows(arrays, [runner.input_details[name]["shape"] for name in runner.inputs])
    results: dict[str, list[np.ndarray]] = {}
    for row in rows:
        outputs = runner(dict(zip(runner.inputs, row, strict=True)))
        for name, value in outputs.items():
            results.setdefault(name, []).append(value)
    np.savez(args.out, **{f"out{i}": np.concatenate(results[name])
                          for i, name in enumerate(sorted(results))})
    return 0


class DefaultRunner:
    """A file's default signature, or its raw input and output tensors when it has no
    signature (files written by other converters, e.g. MediaPipe's): float inputs in,
    quantized as the file wants, float outputs out."""

    def __init__(self, interpreter):
        if interpreter.get_signature_list():
            self._runner = interpreter.get_signature_runner()
            self.inputs = list(next(iter(interpreter.get_signature_list().values()))["inputs"])
            self.input_details = self._runner.get_input_details()
            self.output_details = self._runner.get_output_details()
        else:
            interpreter.allocate_tensors()
            self._runner, self._interpreter = None, interpreter
            self.input_details = {d["name"]: d for d in interpreter.get_input_details()}
            self.output_details = {d["name"]: d for d in interpreter.get_output_details()}
            self.inputs = list(self.input_details)

    def prepare(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs as the file takes them (integer inputs quantized with its scale)."""
        return {name: quantize(np.asarray(value), self.input_details[name])
                for name, value in feeds.items()}

    def run_raw(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One invocation on prepared inputs; outputs as the file gives them."""
        if self._runner is not None:
            return self._runner(**prepared)
        for name, value in prepared.items():
            self._interpreter.set_tensor(self.input_details[name]["index"], value)
        self._interpreter.invoke()
        return {name: self._interpreter.get_tensor(d["index"])
                for name, d in self.output_details.items()}

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: dequantize(value, self.output_details[name])
                for name, value in self.run_raw(self.prepare(feeds)).items()}


def _rows(arrays: list[np.ndarray], shapes: list) -> list[list[np.ndarray]]:
    """[arrays] when they fit the file; one slice per row when every array has N rows
    and every input of the file has a batch of 1."""
    fits = all(tuple(a.shape) == tuple(s) for a, s in zip(arrays, shapes, strict=True))
    count = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
    if fits or count <= 1 or any(s[0] != 1 or a.shape[0] != count
                                 for a, s in zip(arrays, shapes, strict=True)):
        return [arrays]
    return [[a[i:i + 1] for a in arrays] for i in range(count)]


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """q = clip(round(x / scale) + zero_point) for an integer input; floats pass through."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind == "f" or not scale:
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.dtype(values.dtype).kind == "f" or not scale:
        return values
    return ((values.astype(np.float32) - zero) * scale).astype(np.float32)


if __name__ == "__main__":
    sys.exit(main())
