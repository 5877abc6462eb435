"""How quantized linears sit in a safetensors file.

The linear `NAME` loses its `NAME.weight` tensor and gains its packed tensors
(`NAME.qweight`, `NAME.scales`, ... or `NAME.qindices`, `NAME.lut`); the file's
safetensors metadata key `edge_toolkit.quantization` holds a JSON layout
`{"format": "edge-quant/1", "layers": {NAME: meta}}` so the file describes itself.

Format "edge-quant/2" has the same layers, but their tensors are compressed-tensors'
(`NAME.weight_packed`, `.weight_scale`, ...: models/qformat/compressed_tensors.py), the
form transformers loads; "/1" files (Edge Toolkit's own packing) still load.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from models.qformat.affine import AFFINE, AffineQuantized
from models.qformat.palette import PALETTE, PaletteQuantized

QUANT_METADATA_KEY = "edge_toolkit.quantization"
LAYOUT_FORMAT = "edge-quant/1"
CT_LAYOUT_FORMAT = "edge-quant/2"
QuantizedWeight = AffineQuantized | PaletteQuantized
_SCHEMES = {AFFINE: AffineQuantized, PALETTE: PaletteQuantized}


def encode_layout(quantized: dict[str, QuantizedWeight], fmt: str = LAYOUT_FORMAT) -> str:
    return json.dumps({"format": fmt,
                       "layers": {name: q.meta() for name, q in sorted(quantized.items())}})


def decode_layout(text: str) -> dict[str, dict[str, Any]]:
    """Layer name -> meta; raises ValueError on anything but this project's layout."""
    return read_layout(text)[1]


def read_layout(text: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """(format, layer name -> meta); raises ValueError on anything but this project's
    layouts."""
    try:
        layout = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"quantization layout is not JSON ({exc.msg})") from None
    formats = (LAYOUT_FORMAT, CT_LAYOUT_FORMAT)
    if not isinstance(layout, dict) or layout.get("format") not in formats:
        raise ValueError(f"quantization layout is not {' or '.join(formats)}")
    layers = layout.get("layers", {})
    for name, meta in layers.items():
        if meta.get("scheme") not in _SCHEMES:
            raise ValueError(f"{name}: unknown quantization scheme {meta.get('scheme')!r}")
    return layout["format"], layers


def packed_state_dict(state: dict[str, torch.Tensor],
                      quantized: dict[str, QuantizedWeight]) -> dict[str, torch.Tensor]:
    """`state` with each quantized linear's float weight replaced by its packed tensors."""
    out = {k: v for k, v in state.items()
           if not (k.endswith(".weight") and k[: -len(".weight")] in quantized)}
    for name, q in quantized.items():
        out.update(q.to_tensors(name))
    return out


def quantized_from_state(tensors: dict[str, torch.Tensor],
                         layers: dict[str, dict[str, Any]]) -> dict[str, QuantizedWeight]:
    """Rebuild every quantized linear of a file from its packed tensors and layout."""
    out = {}
    for name, meta in layers.items():
        try:
            out[name] = _SCHEMES[meta["scheme"]].from_tensors(name, tensors, meta)
        except KeyError as exc:
            raise ValueError(f"{name}: packed tensor or field {exc} is missing") from None
    return out


def bits_per_weight(quantized: dict[str, QuantizedWeight]) -> float:
    """Stored bits per weight over the quantized linears, scales and tables included."""
    numel = sum(q.shape[0] * q.shape[1] for q in quantized.values())
    return 8 * sum(q.storage_bytes() for q in quantized.values()) / numel if numel else 0.0
