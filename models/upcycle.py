"""Sparse upcycling (Komatsuzaki et al., arXiv 2212.05055): a dense decoder becomes a
token-routed mixture-of-experts model by copying each layer's MLP into E experts and
giving the layer a new router. CLIP-UP (arXiv 2502.00965) upcycles the same way; the
toolkit's paper notes record no further detail of it, so none is claimed here.

    f_e <- MLP for every e,   W_r ~ N(0, std^2) (seeded, no bias)
    y   = sum_{i in S} g_i f_i(x) = MLP(x) * sum_i g_i = MLP(x)

since Mixtral's renormalised gates sum to 1 (models/moe_lm.py): right after upcycling the
model computes what the dense one did, up to float rounding of the gate sum. Training
(toolkit/train/upcycle_lm.py) then makes the copies diverge.

Works on any Hugging Face decoder whose layers hold a bias-free gated MLP
(`mlp.gate_proj`, `up_proj`, `down_proj`, `act_fn`): Llama (SmolLM2), Mistral, Qwen2,
Gemma. The MoE layers are found again by `models.moe_groups.moe_groups(model)` (they
carry the routing-group marker), which also works on a deep copy.
"""

from __future__ import annotations

import torch
from torch import nn

from models.adapter import decoder_layout
from models.errors import ModelError
from models.moe_lm import INIT_STD, SparseMoeBlock

MLP_PARTS = ("gate_proj", "up_proj", "down_proj")


def _dense_mlp(layer: nn.Module, name: str) -> nn.Module:
    mlp = getattr(layer, "mlp", None)
    if isinstance(mlp, SparseMoeBlock):
        raise ModelError(f"{name} is already a mixture-of-experts layer: upcycle a dense model")
    for part in MLP_PARTS:
        linear = getattr(mlp, part, None)
        if not isinstance(linear, nn.Linear):
            raise ModelError(f"{name} has no {part} linear: sparse upcycling needs a gated "
                             "MLP (Llama, Mistral, Qwen2, Gemma families)")
        if linear.bias is not None:
            raise ModelError(f"{name}.{part} has a bias, which the experts do not: upcycling "
                             "supports bias-free MLPs only")
    return mlp


def moe_block_like(mlp: nn.Module, num_experts: int, top_k: int, name: str) -> SparseMoeBlock:
    """An (uninitialised) SparseMoeBlock shaped, typed and activated like `mlp`."""
    intermediate, hidden = mlp.gate_proj.weight.shape
    weight = mlp.gate_proj.weight
    block = SparseMoeBlock(hidden, intermediate, num_experts, top_k, act=mlp.act_fn, name=name)
    return block.to(device=weight.device, dtype=weight.dtype)


def copy_into_experts(block: SparseMoeBlock, mlp: nn.Module) -> None:
    """Every expert of `block` becomes an exact copy of the dense `mlp`."""
    with torch.no_grad():
        for part in MLP_PARTS:
            stacked = getattr(block, part)
            stacked.copy_(getattr(mlp, part).weight.unsqueeze(0).expand_as(stacked))


def upcycle_llama(model: nn.Module, num_experts: int, top_k: int, *,
                  router_init_std: float = INIT_STD, seed: int = 0) -> nn.Module:
    """Replace every decoder layer's MLP by E copies of it plus a new router, in place.

    Router weights are drawn N(0, router_init_std^2) from one generator seeded with
    `seed`, layer after layer, so an upcycle is reproducible."""
    if not 1 <= top_k <= num_experts:
        raise ModelError(f"top_k must be in 1..experts ({num_experts}), got {top_k}")
    if not router_init_std >= 0:
        raise ModelError(f"router_init_std must be >= 0, got {router_init_std}")
    layout = decoder_layout(model)
    generator = torch.Generator().manual_seed(seed)
    for index, layer in enumerate(layout.blocks):
        name = f"{layout.blocks_name}.{index}.mlp"
        mlp = _dense_mlp(layer, name)
        block = moe_block_like(mlp, num_experts, top_k, name)
        copy_into_experts(block, mlp)
        router = torch.randn(block.router.weight.shape, generator=generator) * router_init_std
        with torch.no_grad():
            block.router.weight.copy_(router)
        layer.mlp = block
    return model


def install_moe_layers(model: nn.Module, experts_per_layer: list[int], top_k: int) -> nn.Module:
    """Give a dense model the upcycled shape with `experts_per_layer[i]` experts in layer i
    (weights left to be loaded): how a saved, possibly expert-dropped, MoE LM is rebuilt."""
    layout = decoder_layout(model)
    if len(experts_per_layer) != len(layout.blocks):
        raise ModelError(f"{len(experts_per_layer)} expert counts for {len(layout.blocks)} "
                         "layers: the artifact's toolkit.json does not match its config.json")
    for index, (layer, count) in enumerate(zip(layout.blocks, experts_per_layer, strict=True)):
        name = f"{layout.blocks_name}.{index}.mlp"
        layer.mlp = moe_block_like(_dense_mlp(layer, name), count, top_k, name)
    return model


def moe_layers(model: nn.Module) -> list[SparseMoeBlock]:
    """The model's token-routed MoE layers in module order (empty for a dense model)."""
    return [m for m in model.modules() if isinstance(m, SparseMoeBlock)]


def moe_section(model: nn.Module) -> dict | None:
    """What toolkit.json records of a MoE LM's shape, None for a dense model:
    {"num_experts": max over layers, "top_k": k, "layers": [experts in each layer]}."""
    layers = moe_layers(model)
    if not layers:
        return None
    return {"num_experts": max(m.num_experts for m in layers), "top_k": layers[0].top_k,
            "layers": [m.num_experts for m in layers]}
