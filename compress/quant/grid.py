"""The integer grid shared by RTN, GPTQ and AWQ: per-group scales and zero points, and
round-to-nearest onto that grid. Pure functions over one weight matrix.

For a group of weights w with b bits (maxq = 2^b - 1):

    asymmetric: lo = min(min w, 0), hi = max(max w, 0), scale = (hi - lo) / maxq,
                zero = round(-lo / scale)
    symmetric:  a = max |w|, scale = 2a / maxq, zero = 2^(b-1)   (the GPTQ convention,
                arXiv 2210.17323)
    code = clamp(round(w / scale) + zero, 0, maxq),  w_hat = scale * (code - zero)

Scales are rounded to fp16 *before* the codes are computed, because fp16 is what the file
stores: dequantizing the stored form then gives exactly the weights used during
calibration. Because lo <= 0 <= hi and zero is an integer, w = 0 maps to w_hat = 0, so
quantizing a pruned matrix keeps its zeros.
"""

from __future__ import annotations

import torch

from compress.errors import CompressError

SUPPORTED_BITS = (2, 3, 4, 6, 8)
# Smallest stored scale: keeps all-zero groups (pruned rows) finite; fp16 can hold it.
_MIN_SCALE = 1e-7


def check_grid(bits: int, group_size: int | None, in_features: int) -> int:
    """The group size to use for a layer with `in_features` inputs (None = per channel)."""
    if bits not in SUPPORTED_BITS:
        raise CompressError(f"{bits}-bit integer quantization is not supported: use one of "
                            f"{', '.join(map(str, SUPPORTED_BITS))}")
    group = in_features if group_size is None else group_size
    if group <= 0 or in_features % group:
        raise CompressError(f"group size {group} does not divide the {in_features} inputs: "
                            "choose a divisor (e.g. 32, 64, 128) or per-channel")
    return group


def group_params(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                 clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points [out, n_groups] (fp32 holding fp16 / integer values).

    `clip` (scalar or [out, n_groups]) shrinks each group's range, as AWQ's clip search does.
    """
    out, inp = weight.shape
    groups = weight.float().reshape(out, inp // group_size, group_size)
    maxq = (1 << bits) - 1
    if symmetric:
        amax = groups.abs().amax(dim=2) * clip
        scale = _stored_scale(2 * amax / maxq)
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        lo = groups.amin(dim=2).clamp(max=0) * clip
        hi = groups.amax(dim=2).clamp(min=0) * clip
        scale = _stored_scale((hi - lo) / maxq)
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def _stored_scale(scale: torch.Tensor) -> torch.Tensor:
    return scale.clamp(min=_MIN_SCALE).to(torch.float16).float()


def quantize_to_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                      bits: int) -> torch.Tensor:
    """Round `weight` onto the grid; `scale`/`zero` broadcast against `weight` (e.g. [out, 1]
    for one column, or expanded to [out, in]). Returns float codes in [0, 2^b - 1]."""
    return torch.clamp(torch.round(weight / scale) + zero, 0, (1 << bits) - 1)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (codes - zero)


def expand_groups(params: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, n_groups] -> [out, in] by repeating each group's value over its inputs."""
    return params.repeat_interleave(group_size, dim=1)
