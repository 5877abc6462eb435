"""Vision models to ONNX (torch.onnx dynamo exporter, opset 21) and run by onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from export.errors import require


def write_onnx_vision(wrapped: torch.nn.Module, example: torch.Tensor, out: Path,
                      meta: dict) -> None:
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


def run_onnx_vision(path: Path, example: torch.Tensor) -> list[np.ndarray]:
    ort = require("onnxruntime", "onnx", "running ONNX files")
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: example.numpy()})
