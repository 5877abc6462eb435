"""An LLM artifact on disk: a Hugging Face directory (config, tokenizer, safetensors)
plus `recipe.yaml` and `toolkit.json`.

Quantized linears are stored packed (models.qformat): the safetensors file holds their
integer codes or palette indices with scales / lookup tables instead of float weights,
and its metadata describes the layout, so `models.load_model(DIR)` can rebuild them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from models import LoadedModel, decoder_layout
from models.families.llm_weights import WEIGHTS_FILE, write_quantized_weights
from models.mixtral_io import write_moe_lm_weights
from models.qformat import QuantizedWeight
from toolkit.artifacts import save_artifact

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
        elif isinstance(manifest.get("moe"), dict):  # a MoE LM: Mixtral layout if it fits
            manifest["moe"].update(write_moe_lm_weights(loaded.module, staging))
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
