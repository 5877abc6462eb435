"""A 4-bit affine linear in the one form LiteRT runs without a float copy of its weight:
FULLY_CONNECTED over int4 blockwise codes with float input (dynamic range quantization).

Why: a DEQUANTIZE'd weight (export.litert.weights) becomes a resident float32 tensor at
prepare time, and XNNPACK packs another float copy, about 16 bytes per parameter at run
time (44 GB at 2.7B). Measured with ai-edge-litert 2.3.0 on a 3072 x 8192 FC (25 M
weights, 2 threads): int4 blockwise-32 FC 40 MB resident and 0.46 ms per decode call with
XNNPACK, DEQUANTIZE + FC 118 MB and 6 ms; float 202 MB and 3 ms. Without XNNPACK the
blockwise kernel is the reference one (66 ms), so XNNPACK must stay on.

That form (what ai-edge-quantizer writes for dynamic int4 blockwise) is symmetric: codes
q in [-8, 7], one float16 scale per block, no zero point. The artifact's codes are affine,
W = s * (c - z) per group, so

    W = s' * (c - h)  +  s * (h - z)        h = 2^(bits-1), s' = bf16(s)
        ^ int4 blockwise FC (codes exact)      ^ one float per group: the correction

and y = x W^T = FC_int4(x) + groupsum(x) C^T with C[r, k] = s[r, k] * (h - z[r, k]), a small
float FC [out, in / group] over the input summed per group. The codes and zero points are
carried exactly. The scale is not: XNNPACK converts the block scales to bfloat16 (checked:
the FC's output matched scale rounded to bf16 to 4e-6 and fp16 scales only to 2e-3 on
exactly quantizable inputs), so s' is stored already rounded and the weight moves by
(s' - s)(c - h), at most 2^-8 of each scale; `loss` reports it per layer.

XNNPACK also quantizes the FC's input to int8 per row (asymmetric, scale (max - min) /
255) before the integer dot products. `emulate` makes the PyTorch module do the same
(`dynamic_int8`: it matched the runtime's FC output to 3e-5, against 3e-2 for float
inputs), so the export is verified against what the file computes. That quantization
is discontinuous, though: on SmolLM2-135M a 1e-6 relative change of the embeddings moved
the emulated logits by 13%, as far as float inputs are from them (12%), so through a deep
model the check can only be close, not exact (export.litert.verify_chunks).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from models.qformat import AffineQuantized

BLOCK_MULTIPLE = 32  # XNNPACK's blockwise kernels take blocks of a multiple of 32 inputs


def eligible(packed: object) -> bool:
    """Whether `packed` maps onto the int4 blockwise FC (affine codes of 2..4 bits in
    groups of a multiple of 32 inputs)."""
    return (isinstance(packed, AffineQuantized) and packed.bits <= 4
            and packed.group_size % BLOCK_MULTIPLE == 0)


@dataclasses.dataclass
class BlockwiseWeight:
    codes: torch.Tensor  # int8 [out, in], values in [-8, 7] (c - h)
    scales: torch.Tensor  # float16 [out, groups], bf16-representable (s')
    correction: torch.Tensor | None  # float32 [out, groups] s * (h - z); None if all 0
    group_size: int
    input_scale: torch.Tensor | None  # float32 [in] (AWQ: the input is divided by it)
    loss: float  # relative Frobenius error of the mapped weight against the artifact's

    def main_weight(self) -> torch.Tensor:
        """s' * (c - h) in float32 [out, in]: the FC's weight as converted, found by value
        in the written file and replaced by the codes (export.litert.blockwise_file)."""
        scale = self.scales.float().repeat_interleave(self.group_size, dim=1)
        return scale * self.codes.float()


def to_bf16_scales(scales: torch.Tensor) -> torch.Tensor:
    return scales.float().to(torch.bfloat16).float().to(torch.float16)


def map_blockwise(packed: AffineQuantized) -> BlockwiseWeight:
    half = 1 << (packed.bits - 1)
    codes = (packed.codes.to(torch.int16) - half).to(torch.int8)
    scales = packed.scales.to(torch.float16)
    rounded = to_bf16_scales(scales)
    zeros = packed.zero_points().to(torch.float32)
    correction = scales.float() * (half - zeros)
    # W' - W = (s' - s) (c - h), relative to W = s (c - z)
    step = (rounded.float() - scales.float()).repeat_interleave(packed.group_size, dim=1)
    error = torch.linalg.vector_norm(step * codes.float())
    norm = torch.linalg.vector_norm(packed.dequantize() if packed.input_scale is None
                                    else _without_input_scale(packed))
    loss = float(error / norm) if norm > 0 else 0.0
    input_scale = (None if packed.input_scale is None
                   else packed.input_scale.to(torch.float32))
    return BlockwiseWeight(codes, rounded, None if not correction.any() else correction,
                           packed.group_size, input_scale, loss)


def _without_input_scale(packed: AffineQuantized) -> torch.Tensor:
    return dataclasses.replace(packed, input_scale=None).dequantize()


def dynamic_int8(x: torch.Tensor) -> torch.Tensor:
    """x after XNNPACK's dynamic int8 quantization per row (its qd8 parameters: the
    row's range widened to hold 0, 255 steps, zero point rounded from the minimum)."""
    low = torch.clamp(x.amin(-1, keepdim=True), max=0.0)
    high = torch.clamp(x.amax(-1, keepdim=True), min=0.0)
    scale = (high - low) / 255.0
    scale = torch.where(high == low, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-128.0 - low / scale), -128, 127)
    codes = torch.clamp(torch.round(x / scale) + zero, -128, 127)
    return (codes - zero) * scale


class BlockwiseLinear(nn.Module):
    """y = FC(x, s'(c - h)) + groupsum(x) C^T (+ bias), x divided first by an AWQ input
    scale. `emulate` quantizes the FC's input as the runtime does (module docstring)."""

    def __init__(self, mapped: BlockwiseWeight, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(mapped.main_weight(), requires_grad=False)
        self.correction = (None if mapped.correction is None
                           else nn.Parameter(mapped.correction, requires_grad=False))
        self.input_scale = (None if mapped.input_scale is None
                            else nn.Parameter(mapped.input_scale, requires_grad=False))
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)
        self.group_size = mapped.group_size
        self.emulate = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale
        y = F.linear(dynamic_int8(x) if self.emulate else x, self.weight)
        if self.correction is not None:
            groups = x.unflatten(-1, (x.shape[-1] // self.group_size, self.group_size))
            y = y + F.linear(groups.sum(-1), self.correction)
        return y if self.bias is None else y + self.bias
