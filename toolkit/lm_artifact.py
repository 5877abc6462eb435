"""An LLM artifact on disk: a Hugging Face directory (config, tokenizer, safetensors)
plus `recipe.yaml` and `toolkit.json`, written by `toolkit.artifacts.save_model_artifact`
(the LLM / MoE LM family writes the files: models/families/). This module keeps the
compression job's entry point and the sparsity measure it records.

Quantized linears are stored packed (models/families/llm_weights.py), so
`models.load_model(DIR)` can rebuild them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from models import LoadedModel, decoder_layout
from models.qformat import QuantizedWeight
from toolkit.artifacts import save_model_artifact


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
    """Write the artifact atomically; `manifest` is completed in place (schema keys, the
    family's section, the files' true sizes). `quantized`: the packed form of the
    linears a quantization stage produced (empty when none ran); it replaces whatever
    packed form `loaded` came with, which no longer describes its weights."""
    loaded.quantized = quantized or None
    return save_model_artifact(out, loaded, manifest, recipe_yaml=recipe_yaml,
                               overwrite=overwrite)
