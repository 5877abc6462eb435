"""What an LLM artifact's manifest records of its sparsity: the exact zeros in the decoder
blocks' linears. (The artifact itself is written by `toolkit.artifacts.save_model_artifact`
through the LLM / MoE LM family, models/families/.)"""

from __future__ import annotations

from torch import nn

from models import decoder_layout


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
