"""Numerical agreement between an exported file and PyTorch: max abs error, the error
relative to the reference's largest magnitude, and cosine similarity per output."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class OutputAgreement:
    name: str
    max_abs_error: float
    relative_error: float  # max |a - b| / max |b|
    cosine: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def agreement(name: str, runtime: np.ndarray, reference: np.ndarray) -> OutputAgreement:
    a = np.asarray(runtime, dtype=np.float64).reshape(-1)
    b = np.asarray(reference, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"output {name}: runtime shape {np.shape(runtime)} differs from "
                         f"PyTorch's {np.shape(reference)}")
    error = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))
    return OutputAgreement(name, error, error / scale if scale > 0 else error, cosine)
