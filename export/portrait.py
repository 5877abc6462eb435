"""The portrait segmenter's deployed output as LiteRT runs it best.

    p = softmax(l)_fg + 0.5 softmax(l)_boundary        l: 3-class logits [N, 3, H, W]

models.portrait.foreground_probability spells the softmax out element-wise
(exp(l - max l) / sum), which spares onnxruntime the transposes of a channel Softmax.
LiteRT is the other way round: its layout is NHWC, so the channel softmax is one
SOFTMAX op over the last axis, which has an int8 kernel, while ai-edge-quantizer leaves
REDUCE_MAX and EXP in float, wrapped in QUANTIZE / DEQUANTIZE over the whole 3-class
map. Measured on the 50%-pruned portrait-256 (w0.5) int8 file, one thread, same
weights, interleaved runs: 4.6 ms with the SOFTMAX op, 7.9 ms with the element-wise
form. For .tflite files the portrait segmenter is therefore exported through
`LiteRTPortrait`: the same network and value (up to float rounding), torch.softmax at
the end.
"""

from __future__ import annotations

import torch
from torch import nn

from models.portrait import PortraitSegmenter


class LiteRTPortrait(nn.Module):
    """PortraitSegmenter's deployed map with torch.softmax over the classes."""

    def __init__(self, segmenter: PortraitSegmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deepest, skips = self.segmenter.features(x)
        probs = torch.softmax(self.segmenter.decode(deepest, skips, x.shape[-2:]), dim=1)
        return probs[:, 1:2] + 0.5 * probs[:, 2:3]


def for_litert(module: nn.Module) -> nn.Module:
    """The module to convert for LiteRT: a portrait segmenter gets the softmax op;
    anything else is exported as it is (the LiteRT exporter's prepare_vision)."""
    if isinstance(module, PortraitSegmenter):
        return LiteRTPortrait(module).eval()
    return module
