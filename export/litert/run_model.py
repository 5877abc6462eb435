"""Run a .tflite model's default signature on saved inputs, meant for a child process
(the LiteRT interpreter can abort the whole process).

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
    outputs = runner(**{name: data[f"arg{i}"] for i, name in enumerate(inputs)})
    np.savez(args.out, **{f"out{i}": outputs[name] for i, name in enumerate(sorted(outputs))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
