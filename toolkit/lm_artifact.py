"""An LLM artifact on disk: a Hugging Face directory (config, tokenizer, safetensors)
plus `recipe.yaml` and `toolkit.json`.

Quantized linears are stored packed (models.qformat): the safetensors file holds their
integer codes or palette indices with scales / lookup tables instead of float weights,
and its metadata describes the layout, so `models.load_model(DIR)` can rebuild them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from models import LoadedModel, decoder_layout
from models.qformat import QUANT_METADATA_KEY, QuantizedWeight, encode_layout, packed_state_dict
from toolkit.artifacts import save_artifact

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "recipe.yaml"


def block_sparsity(module: nn.Module) -> tuple[float, dict[str, float]]:
    """Fraction of exact zeros over all decoder-block linears, and per linear."""
    layout = decoder_layout(module)
    per_layer, zeros, total = {}, 0, 0
    for index in range(len(layout.blocks)):
        for name, linear in layout.block_linears(index).items():
            count = int((linear.weight == 0).sum())
            per_layer[name] = count / linear.weight.numel()
            zeros, total = zeros + count, total + linear.weight.numel()
    return (zeros / total if total else 0.0), per_layer


def save_lm_artifact(out: Path, loaded: LoadedModel, manifest: dict[str, Any],
                     quantized: dict[str, QuantizedWeight], recipe_yaml: str, *,
                     overwrite: bool) -> Path:
    """Write the artifact atomically; adds the files' true sizes to the manifest."""

    def write(staging: Path) -> None:
        if quantized:
            write_quantized_weights(staging, loaded.module, quantized)
        else:
            loaded.module.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
        (staging / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
        weights = sorted(staging.glob("*.safetensors"))
        manifest["files"] = {
            "weights_bytes": sum(p.stat().st_size for p in weights),
            "total_bytes": sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()),
            "weights": [p.name for p in weights],
        }

    return save_artifact(out, write, manifest, overwrite=overwrite)


def write_quantized_weights(directory: Path, module: nn.Module,
                            quantized: dict[str, QuantizedWeight]) -> Path:
    """config.json (+ generation_config.json) and one safetensors file whose quantized
    linears are packed; tied tensors (embeddings = LM head) are stored once."""
    module.config.save_pretrained(directory)
    generation = getattr(module, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)
    state = packed_state_dict(_untied_state(module), quantized)
    path = directory / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, path,
              metadata={"format": "pt", QUANT_METADATA_KEY: encode_layout(quantized)})
    return path


def _untied_state(module: nn.Module) -> dict[str, torch.Tensor]:
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
