"""Choices that depend on the machine: the device and the calibration forward's dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from toolkit.errors import UserError

FORWARD_DTYPES = ("auto", "fp32", "bf16")


def resolve_device(name: str) -> str:
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
        return name
    raise UserError(f"--device {name!r} is unknown: use cpu or cuda[:N]")


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_forward_dtype(choice: str, device: str) -> torch.dtype:
    """`auto` picks bf16 where the hardware multiplies bf16 natively, else fp32: on a CPU
    without AMX/AVX512-BF16, bf16 is emulated and slower than fp32."""
    if choice == "fp32":
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
