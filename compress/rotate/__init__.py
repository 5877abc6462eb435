"""Rotations of the residual stream before quantization (QuaRot arXiv 2404.00456,
SpinQuant arXiv 2405.16406): see compress/rotate/rotate.py."""

from compress.rotate.hadamard import hadamard, orthogonal
from compress.rotate.rotate import RotateConfig, RotateReport, rotate_model

__all__ = ["RotateConfig", "RotateReport", "hadamard", "orthogonal", "rotate_model"]
