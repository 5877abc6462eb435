"""Which input channels of each int4 blockwise FC leave its dynamic int8 input.

XNNPACK quantizes a blockwise FC's input to int8 with ONE scale per row (token):
step = (max - min) / 255 (export.litert.blockwise.dynamic_int8). Decoder LMs have massive
activations: a few fixed channels hundreds of times larger than the rest (Sun et al.,
arXiv 2402.17762), on SmolLM2-135M up to 3,200 times the median channel's peak in layer
11's down_proj input. One such channel sets the step of its whole row, and the ordinary
channels round to a handful of levels.

Measured on SmolLM2-135M GPTQ 4-bit g64, all 210 FCs' inputs emulated against float
compute on 32 held-out Wikipedia windows of 128 tokens (BENCHMARKS.md,
"litert-int8-inputs"): next-token KL 0.025 and 5.7% of the tokens flipped where float
compute was decided (margin >= 0.1). The error is spread over the FCs: no FC alone costs
more than KL 0.003, and keeping the 60 most sensitive at float compute (a DEQUANTIZE'd
float copy each, 16 bytes per parameter at run time) still leaves KL 0.005; 120 of the
210 reach 0.002. Two changes of the file's form, neither with a float copy of a weight,
bring it to KL 0.002 and 0.4% flips (ONNX's int8 compute, a symmetric scale per 32
inputs, measured the same way: 0.004 and 1.3%):

- outlier channels split off (here): the int4 FC reads x with them zeroed, and a float FC
  over just those channels adds x[:, O] W'[:, O]^T back (LLM.int8()'s decomposition,
  arXiv 2208.07339, with the channels chosen once from calibration rather than per
  batch; export.litert.blockwise.BlockwiseLinear). Alone: KL 0.008;
- input slices (export.litert.blockwise.INT8_SLICE): one int4 FC per ~128 inputs, so each
  slice's int8 input has its own scale per token. Alone: KL 0.005 (slices of 64 with the
  split: 0.0013, for twice the FCs).

The channels are static because massive activations sit in the same few dimensions
whatever the input (arXiv 2402.17762, section 2); they are found by running the chunk in
float over calibration tokens (`toolkit export`: 4 x 128 Wikipedia tokens) and taking,
per FC input, the OUTLIER_CHANNELS channels with the largest peak |x| that also exceed
OUTLIER_RATIO times the median channel's peak (a channel near the median gains nothing
from leaving: with no ratio test twice the channels gave the same KL). A float column
costs 4 bytes per output row: on SmolLM2-135M 1,001 channels of 189 FCs, 2.8 MB; on a 3B
model at most 8 columns per FC.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

OUTLIER_CHANNELS = 8  # at most this many channels per FC input leave the int8 FC
OUTLIER_RATIO = 4.0  # ... each with a peak |x| above this many times the median channel's


def input_peaks(module: nn.Module, linears: dict[str, nn.Module],
                inputs: Sequence[torch.Tensor], run) -> dict[str, torch.Tensor]:
    """Per linear of `linears` (name -> module inside `module`): the largest |x_j| over
    every row each calibration input gives it, in float compute. `run(x)` calls the
    module on one input."""
    peaks: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(linear, args):
            x = args[0].detach()
            if getattr(linear, "input_scale", None) is not None:  # AWQ: the FC reads x / s
                x = x / linear.input_scale
            x = x.reshape(-1, x.shape[-1]).abs().amax(0)
            peaks[name] = x if name not in peaks else torch.maximum(peaks[name], x)
        return record

    handles = [linear.register_forward_pre_hook(hook(name))
               for name, linear in linears.items()]
    try:
        with torch.no_grad():
            for x in inputs:
                run(x)
    finally:
        for handle in handles:
            handle.remove()
    return peaks


def choose_outliers(peaks: torch.Tensor, count: int = OUTLIER_CHANNELS,
                    ratio: float = OUTLIER_RATIO) -> list[int]:
    """At most `count` channels, largest peak first, each above `ratio` x the median."""
    if count <= 0 or peaks.numel() == 0:
        return []
    floor = ratio * float(peaks.median())
    top = peaks.topk(min(count, peaks.numel()))
    return sorted(int(i) for v, i in zip(top.values, top.indices, strict=True)
                  if float(v) > floor)
