"""Static int8 scales for a decoder's key/value cache (`toolkit export onnx --kv-cache int8`).

onnxruntime's GroupQueryAttention stores an int8 cache with one fixed scale per cache
channel (kv head h, dimension d), given to the file as a constant:

    code = clamp(round(k / s_k[h, d]), -128, 127),   k ~= s_k[h, d] * code

(the same for values with s_v). The keys it stores are after the rotary embedding, so the
scales are measured on rotated keys: this module runs the PyTorch model on calibration
windows and takes, per layer, head and dimension, the largest |k| and |v| seen, over 127
(absmax calibration, as KIVI's and KVQuant's per-channel key quantization, arXiv
2402.02750 / 2401.18079, but static). Keys have a few channels far larger than the rest
(the rotary pairs that carry position), which per-channel scales keep from flattening
the others; a value beyond the calibrated range is clipped at runtime, so the windows
include position 0 (the attention-sink token, whose keys differ most) and the export's
verification measures the result.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

INT8_MAX = 127
# A channel that never moved (all zeros in calibration) still needs a positive scale.
TINY = 1e-8


@dataclasses.dataclass(frozen=True)
class KvScales:
    """keys, values: [layers, kv_heads, head_dim] float32 scales (s = absmax / 127)."""

    keys: np.ndarray
    values: np.ndarray
    tokens: int  # calibration tokens they were measured on


@torch.no_grad()
def measure_kv_scales(module: torch.nn.Module, windows: list[torch.Tensor]) -> KvScales:
    """Per-channel absmax / 127 of the rotated keys and the values `module` (a Hugging Face
    causal LM) writes to its cache over each window (1-D token ids), run one at a time from
    position 0."""
    keys = values = None
    for window in windows:
        output = module(input_ids=window[None].long(), use_cache=True)
        cache = output.get("cache") or output.get("past_key_values")
        k = torch.stack([layer.keys[0] for layer in cache.layers])  # [L, KV, T, D]
        v = torch.stack([layer.values[0] for layer in cache.layers])
        k_max, v_max = k.abs().amax(dim=2).float(), v.abs().amax(dim=2).float()
        keys = k_max if keys is None else torch.maximum(keys, k_max)
        values = v_max if values is None else torch.maximum(values, v_max)
    if keys is None:
        raise ValueError("measure_kv_scales needs at least one calibration window")
    return KvScales(keys=(keys.clamp_min(TINY) / INT8_MAX).numpy(),
                    values=(values.clamp_min(TINY) / INT8_MAX).numpy(),
                    tokens=sum(len(w) for w in windows))
