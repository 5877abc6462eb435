"""`fake-moe-llm`: the tiny fake Llama sparsely upcycled to 4 experts (top-2), for tests.

Straight after upcycling every expert is the same MLP, so nothing could tell them apart;
each copy is perturbed (seeded) so that criteria, dropping and recording see different
experts. The router is drawn wider than a real upcycle's (std 0.3, not 0.02) so that the
routing is decided rather than near-uniform on a 64-wide model."""

from __future__ import annotations

import torch

from models.fake_llm import FAKE_SEED
from models.registry import LoadedModel, create_model, register_model
from models.upcycle import moe_layers, upcycle_llama

FAKE_EXPERTS, FAKE_TOP_K = 4, 2
FAKE_ROUTER_STD = 0.3
# Noise added to each expert copy, relative to the std of the dense weight it copies.
FAKE_EXPERT_NOISE = 0.5


def perturb_experts(model: torch.nn.Module, relative_std: float, seed: int) -> None:
    """W_e <- W_e + relative_std * std(W_e) * N(0, 1), independently per expert."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in moe_layers(model):
            for stacked in layer.expert_parameters():
                scale = relative_std * stacked.std(dim=(1, 2), keepdim=True)
                stacked.add_(scale * torch.randn(stacked.shape, generator=generator))


@register_model("fake-moe-llm", family="moe-llm", weights="random, generated (tests)",
                description="fake-llama upcycled to 4 experts, top-2, experts perturbed",
                fake=True)
def fake_moe_llm() -> LoadedModel:
    loaded = create_model("fake-llama")
    upcycle_llama(loaded.module, FAKE_EXPERTS, FAKE_TOP_K, router_init_std=FAKE_ROUTER_STD,
                  seed=FAKE_SEED)
    perturb_experts(loaded.module, FAKE_EXPERT_NOISE, FAKE_SEED + 1)
    loaded.source = "random init (fake-llama upcycled: 4 experts, top-2)"
    return loaded
