"""What a quantization run produced: the packed form of every quantized linear."""

from __future__ import annotations

import dataclasses
from typing import Any

from models.qformat import QuantizedWeight, bits_per_weight


@dataclasses.dataclass
class QuantReport:
    method: str
    quantized: dict[str, QuantizedWeight]  # linear name -> stored form
    ignored: list[str]
    calib_tokens: int
    forward_dtype: str
    seconds: dict[str, float]
    backend: str = "toolkit"
    # Mixed-bit allocation: target, achieved, per-layer bits and sensitivities.
    allocation: dict[str, Any] | None = None

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight over the quantized linears, scales/tables included."""
        return bits_per_weight(self.quantized)

    def manifest_section(self) -> dict[str, Any]:
        layers = {name: {**q.meta(), "bits_per_weight": bits_per_weight({name: q}),
                         "bytes": q.storage_bytes()}
                  for name, q in sorted(self.quantized.items())}
        return {"kind": "quantize", "method": self.method, "backend": self.backend,
                "bits_per_weight": self.bits_per_weight,
                "bytes": sum(q.storage_bytes() for q in self.quantized.values()),
                "weights": sum(q.shape[0] * q.shape[1] for q in self.quantized.values()),
                "layers": layers, "ignored": self.ignored, "allocation": self.allocation}
