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
inputs). That quantization is discontinuous, though: on SmolLM2-135M a 1e-6 relative
change of the embeddings moved the emulated logits by 13%, as far as float inputs are
from them (12%), so through a deep model the emulation is one sample of the rounding
noise, and the verdict compares with float compute (export.litert.verify_chunks).

One scale per row is what costs: massive activation channels set it
(export.litert.int8_outliers). So each linear is written as one int4 FC per input slice
of about INT8_SLICE inputs (whole quantization groups: the codes and scales are the
same, cut by columns; each slice's input gets its own scale), with its outlier channels
split off into a small float FC; in float arithmetic the sum is the same product.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from export.llm.decoder import lora_side_tensors
from models.qformat import AffineQuantized

BLOCK_MULTIPLE = 32  # XNNPACK's blockwise kernels take blocks of a multiple of 32 inputs
# Input channels per int8 scale: each FC is written as one int4 FC per slice of about this
# many inputs (whole quantization groups), so each slice's int8 input gets its own scale
# per token (export.litert.int8_outliers measures it).
INT8_SLICE = 128


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

    def part(self, start: int, stop: int) -> BlockwiseWeight:
        """Input channels start..stop-1 (whole groups) as a weight of their own: its codes
        and scales; the correction and AWQ scale stay with the whole linear."""
        groups = slice(start // self.group_size, stop // self.group_size)
        return BlockwiseWeight(self.codes[:, start:stop].contiguous(),
                               self.scales[:, groups].contiguous(), None, self.group_size,
                               None, 0.0)


def slice_bounds(width: int, group_size: int, target: int = INT8_SLICE
                 ) -> list[tuple[int, int]]:
    """Input ranges of about `target` channels made of whole `group_size` groups, as even
    as the groups allow (one range when target >= width or target <= 0)."""
    groups = width // group_size
    count = 1 if target <= 0 else max(1, min(groups, round(width / target)))
    edges = [round(i * groups / count) * group_size for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


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
    """y = sum_k FC(x[:, slice k], s'(c - h)[:, slice k]) + groupsum(x) C^T (+ bias), x
    divided first by an AWQ input scale: one int4 FC per input slice (`bounds`, whole
    quantization groups of about INT8_SLICE channels), so that XNNPACK's dynamic int8
    input has one scale per token AND slice. `emulate` quantizes each FC's input as the
    runtime does (module docstring).

    `outliers` (input channels, export.litert.int8_outliers) leave the int4 FCs: their
    input is x with those channels zeroed, and a float FC over just those channels adds
    their part back, x[:, O] W'[:, O]^T, so the int8 scale is set by the other channels
    (LLM.int8()'s decomposition, arXiv 2208.07339). Zeros are exact in the runtime's
    asymmetric int8, so in float arithmetic the sum is the same product.

    `lora` (A [r, in], B [out, r], s): the adapter's float side branch s (x A^T) B^T on
    the linear's own input (arXiv 2106.09685; models/qformat/lora.py), as
    export.llm.decoder.ExportLinear adds it: float32 FCs of their own in the file."""

    def __init__(self, mapped: BlockwiseWeight, bias: torch.Tensor | None,
                 outliers=None, lora: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                 slice_width: int = INT8_SLICE):
        super().__init__()
        self.bounds = slice_bounds(mapped.codes.shape[1], mapped.group_size, slice_width)
        self.mapped_parts = [mapped.part(a, b) for a, b in self.bounds]
        self.parts = nn.ParameterList(nn.Parameter(part.main_weight(), requires_grad=False)
                                      for part in self.mapped_parts)
        self.correction = (None if mapped.correction is None
                           else nn.Parameter(mapped.correction, requires_grad=False))
        self.input_scale = (None if mapped.input_scale is None
                            else nn.Parameter(mapped.input_scale, requires_grad=False))
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)
        self.group_size = mapped.group_size
        self.emulate = False
        self.keep = self.outlier_index = self.outlier_weight = None
        self.set_outliers(outliers)
        self.lora_a_t, self.lora_b_t, self.lora_scale = lora_side_tensors(lora)

    def set_outliers(self, outliers) -> None:
        """Split these input channels off the int8 FCs (none: undo the split)."""
        self.keep = self.outlier_index = self.outlier_weight = None
        if outliers is None or not len(outliers):
            return
        index = torch.as_tensor(list(outliers), dtype=torch.long).sort().values
        keep = torch.ones(self.bounds[-1][1])
        keep[index] = 0.0
        self.keep = nn.Parameter(keep, requires_grad=False)
        self.outlier_index = index
        columns = [next(w[:, j - a] for (a, b), w in zip(self.bounds, self.parts, strict=True)
                        if a <= j < b) for j in index.tolist()]
        self.outlier_weight = nn.Parameter(torch.stack(columns, dim=1), requires_grad=False)

    @property
    def outlier_channels(self) -> list[int]:
        return [] if self.outlier_index is None else self.outlier_index.tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        given = x
        if self.input_scale is not None:
            x = x / self.input_scale
        main = x if self.keep is None else x * self.keep
        y = None
        for (a, b), weight in zip(self.bounds, self.parts, strict=True):
            piece = main[..., a:b] if len(self.bounds) > 1 else main
            part = F.linear(dynamic_int8(piece) if self.emulate else piece, weight)
            y = part if y is None else y + part
        if self.keep is not None:
            y = y + F.linear(x.index_select(-1, self.outlier_index), self.outlier_weight)
        if self.correction is not None:
            groups = x.unflatten(-1, (x.shape[-1] // self.group_size, self.group_size))
            y = y + F.linear(groups.sum(-1), self.correction)
        if self.lora_a_t is not None:
            y = y + (given @ self.lora_a_t) @ self.lora_b_t * self.lora_scale
        return y if self.bias is None else y + self.bias
