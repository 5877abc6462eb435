"""A per-image routed mixture of experts (models.vmoe, Mobile V-MoE, arXiv 2309.04354)
exported for a bundle with its routing as a second output, so a demo app can show which
expert each picture went to.

    outputs:  logits [1, classes] (the file --out writes has only this one)
              experts [1, k] int32: the experts the router chose for the image

The router runs once per image, after the dense blocks, and every MoE block uses its
choice (models.vmoe.VisionMoE.route), so one [1, k] tensor is the whole routing. The
indices are the router's own top-k, computed inside the graph; no extra work runs. The
output goes through the same verification as the logits: the runtime must choose the
experts PyTorch chose (an integer mismatch fails the relative-error check).

Recognised by shape, not by class: a module whose `forward_with_routing(x)` returns an
object with `.logits` and `.experts`, that has a `router`, and whose `config` has
`top_k`, `num_experts`, `depth` and `moe_layers`. A dense model (no router) is exported
as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn


class WithExpertChoice(nn.Module):
    """model(x) -> (class logits, chosen experts as int32); int32 because JavaScript
    reads int64 tensors as BigInt arrays, and an expert index is small."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_with_routing(x)
        return out.logits, out.experts.to(torch.int32)


def routes_per_image(module: nn.Module) -> bool:
    """Whether `module` is a per-image routed MoE whose choice can be an output."""
    config = getattr(module, "config", None)
    return (callable(getattr(module, "forward_with_routing", None))
            and getattr(module, "router", None) is not None
            and all(hasattr(config, key) for key in ("top_k", "num_experts", "depth",
                                                     "moe_layers")))


def with_expert_output(artifact: Any) -> Any:
    """A shallow copy of the models.LoadedModel whose module also returns the experts;
    the artifact itself when it has no per-image router."""
    if not routes_per_image(artifact.module):
        return artifact
    return dataclasses.replace(artifact, module=WithExpertChoice(artifact.module))


def experts_section(module: nn.Module, output: dict) -> dict:
    """The manifest's "experts": which output holds the choice and what it means."""
    config = module.config
    first = config.depth - config.moe_layers
    return {
        "output": output["name"], "dtype": output["dtype"], "shape": output["shape"],
        "top_k": int(config.top_k), "num_experts": int(config.num_experts),
        "moe_blocks": list(range(first, config.depth)), "blocks": int(config.depth),
        "meaning": "indices (0..num_experts-1) of the experts the per-image router chose, "
                   "best first; one router decides for the whole image and every MoE "
                   "block (moe_blocks, counted from 0) runs those experts",
    }
