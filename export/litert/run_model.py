"""Run a .tflite model's default signature on saved float inputs, meant for a child
process (the LiteRT interpreter can abort the whole process). Integer inputs of a fully
quantized model are quantized with the file's own scale and zero point, integer outputs
dequantized, as an app would.

    python -m export.litert.run_model MODEL.tflite --inputs IN.npz --out OUT.npz
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=args.model)
    runner = interpreter.get_signature_runner()
    names = interpreter.get_signature_list()
    inputs = next(iter(names.values()))["inputs"]
    data = np.load(args.inputs)
    input_details, output_details = runner.get_input_details(), runner.get_output_details()
    outputs = runner(**{name: quantize(data[f"arg{i}"], input_details[name])
                        for i, name in enumerate(inputs)})
    np.savez(args.out, **{f"out{i}": dequantize(outputs[name], output_details[name])
                          for i, name in enumerate(sorted(outputs))})
    return 0


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
