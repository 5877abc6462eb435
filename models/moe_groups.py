"""What expert dropping needs from any mixture-of-experts model: its routing groups.

A *routing group* is one router and the experts it chooses among. Dropping expert e of a
group deletes e from every expert stack the group routes to and deletes the router's row
for e, so e can never be chosen again. The unit differs by family:

* Mobile V-MoE routes per image: ONE router picks the experts for all MoE blocks, so the
  model is one group whose expert e spans every MoE block (dropping e drops it from all).
* A token-routed MoE language model (Mixtral-style, upcycled SmolLM2) has a router per
  layer: one group per layer.

A model exposes its groups with a `moe_groups()` method returning `MoeGroup`s; compress's
expert-dropping engine talks only to this protocol, never to a model class.

Recording (what calibration collects for the criteria, `compress.experts.ExpertStats`):
while `group.recording` is a list, each forward appends one `RoutingRecord` per routed
batch. For a per-image group a unit is an image; for a token group a unit is a token.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from models.errors import ModelError


@dataclasses.dataclass
class RoutingRecord:
    """One routed batch of T units (images or tokens), detached, on the CPU."""

    # [T, E] softmax of the router logits over the group's experts.
    router_probs: torch.Tensor
    # [T, k] int64 chosen experts (distinct within a row).
    chosen: torch.Tensor
    # [T, k] combine weights of the chosen experts, as the forward used them.
    gates: torch.Tensor
    # [T, k] ||f_e(x_t)||_2 of each chosen expert's output before the gate multiplies it.
    # A per-image group takes the Frobenius norm over the image's tokens and over every
    # MoE block the group routes to (sqrt of the summed squares).
    expert_output_norms: torch.Tensor


@runtime_checkable
class MoeGroup(Protocol):
    """One router and its experts. Implementations are small views over a model's modules."""

    # A stable, human-readable name for reports, e.g. "router" or "model.layers.3.mlp".
    name: str
    # While a list, forwards append RoutingRecords to it; None (the default) records nothing.
    recording: list[RoutingRecord] | None
    # None = every expert may be chosen; a sorted list = only those (the router's logits
    # for the others are -inf). NAEE's subset search runs the layer under each candidate.
    allowed: list[int] | None

    @property
    def num_experts(self) -> int: ...

    @property
    def top_k(self) -> int: ...

    def router_weight(self) -> torch.Tensor:
        """[E, D]: row e produces expert e's logit."""
        ...

    def expert_parameters(self) -> list[nn.Parameter]:
        """Every stacked expert tensor of the group, each [E, ...] (all blocks it spans)."""
        ...

    def keep_only(self, keep: list[int]) -> None:
        """Keep experts `keep` (new expert i = old expert keep[i]) in every stack and the
        router's rows for them; afterwards num_experts == len(keep)."""
        ...


def moe_groups(model: nn.Module) -> list[MoeGroup]:
    """The model's routing groups, or a ModelError that says the model has no experts.

    A model either has a `moe_groups()` method (V-MoE: one group over several blocks) or
    contains modules that are groups themselves, marked `routing_group = True` (a
    token-routed MoE layer), found in module order."""
    finder = getattr(model, "moe_groups", None)
    groups = finder() if callable(finder) else [
        m for m in model.modules() if getattr(type(m), "routing_group", False)]
    if not groups:
        raise ModelError(f"{type(model).__name__} has no mixture-of-experts layers: "
                         "expert dropping needs a MoE model (e.g. a trained V-MoE or an "
                         "upcycled language model)")
    return list(groups)


def restricted_logits(logits: torch.Tensor, allowed: list[int] | None) -> torch.Tensor:
    """Router logits with every expert outside `allowed` at -inf (softmax gives it 0)."""
    if allowed is None:
        return logits
    mask = torch.full((logits.shape[-1],), float("-inf"), dtype=logits.dtype,
                      device=logits.device)
    mask[torch.tensor(allowed, dtype=torch.long, device=logits.device)] = 0.0
    return logits + mask
