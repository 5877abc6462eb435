"""Numerical agreement between an exported file and PyTorch: max and mean abs error, the
error relative to the reference's largest magnitude, and cosine similarity per output."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class OutputAgreement:
    name: str
    max_abs_error: float
    relative_error: float  # max |a - b| / max |b|
    cosine: float
    # mean |a - b|: int8 files are judged on it, their largest errors sit at a few
    # elements whose activations crossed a rounding step (a segmenter's mask edge)
    mean_abs_error: float = 0.0

    @property
    def mean_relative_error(self) -> float:
        """mean |a - b| / max |b| (relative_error's scale, which is max_abs / relative)."""
        if not self.max_abs_error:
            return 0.0
        return self.mean_abs_error * self.relative_error / self.max_abs_error

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
    mean = float(np.abs(a - b).mean()) if a.size else 0.0
    return OutputAgreement(name, error, error / scale if scale > 0 else error, cosine, mean)
