"""Writing an LLM's weights when some of its linears are quantized: the packed codes
(models.qformat) go into `model.safetensors` in place of float weights, and the file's
metadata describes the layout, so `models.load_model(DIR)` rebuilds them.

Kept whole in this one module on purpose: the on-disk layout of quantized weights is
expected to change (to a format transformers loads), and that change belongs here only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from models.qformat import QUANT_METADATA_KEY, QuantizedWeight, encode_layout, packed_state_dict

WEIGHTS_FILE = "model.safetensors"


def write_quantized_weights(directory: Path, module: nn.Module,
                            quantized: dict[str, QuantizedWeight]) -> Path:
    """config.json (+ generation_config.json) and one safetensors file whose quantized
    linears are packed; tied tensors (embeddings = LM head) are stored once."""
    module.config.save_pretrained(directory)
    generation = getattr(module, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)
    state = packed_state_dict(untied_state(module), quantized)
    path = directory / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, path,
              metadata={"format": "pt", QUANT_METADATA_KEY: encode_layout(quantized)})
    return path


def untied_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor kept under its first name only, as
    transformers writes it (the loader re-ties them from the config)."""
    seen, state = set(), {}
    for name, tensor in module.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().cpu()
    return state
