"""A Mixtral-style sparse mixture-of-experts MLP for decoder LMs (arXiv 2401.04088).

For each token x (a row of the flattened [B*L, D] hidden states):

    p      = softmax(W_r x)                         router W_r: [E, D], no bias
    S      = the k experts with the largest p
    g_i    = p_i / sum_{j in S} p_j      (i in S)   Mixtral's gates: a softmax over the
                                                    top-k logits, so sum_i g_i = 1
    y      = sum_{i in S} g_i * f_i(x)
    f_i(x) = W_down^i (silu(W_gate^i x) * (W_up^i x))   a Llama SwiGLU MLP

The experts' weights are stacked, `gate_proj` and `up_proj` [E, H, D], `down_proj`
[E, D, H], so dropping experts is slicing dim 0. Tokens are dispatched by a loop over
experts: each expert runs on exactly the tokens routed to it (index_select), its output is
scaled by the gate and added back (index_add).

Load balancing (Switch Transformer, arXiv 2101.03961, which Mixtral trains with):

    L_bal = E * sum_e f_e * P_e

f_e = share of the T*k routing assignments that go to expert e (no gradient), P_e = mean
router probability of e over the T tokens. L_bal = 1 when routing is uniform.

The block is its own routing group (models.moe_groups.MoeGroup): one router per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelError
from models.moe_groups import RoutingRecord, restricted_logits

# Llama's initializer_range: the std of every fresh linear in a Llama checkpoint.
INIT_STD = 0.02


def swiglu_expert(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                  act=F.silu) -> torch.Tensor:
    """f(x) = down (act(gate x) * (up x)) for x [T, D], gate/up [H, D], down [D, H]."""
    return F.linear(act(F.linear(x, gate)) * F.linear(x, up), down)


def balance_loss(probs: torch.Tensor, chosen: torch.Tensor, num_experts: int) -> torch.Tensor:
    """E * sum_e f_e P_e (arXiv 2101.03961) for probs [T, E] and chosen [T, k]."""
    share = F.one_hot(chosen, num_experts).float().mean(dim=(0, 1))  # f_e, sums to 1
    return num_experts * (share * probs.float().mean(dim=0)).sum()


class SparseMoeBlock(nn.Module):
    """Drop-in replacement of a decoder layer's `mlp`: [..., D] -> [..., D]."""

    # models.moe_groups.moe_groups finds token-routed layers by this marker.
    routing_group = True

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int,
                 top_k: int, *, act: nn.Module | None = None, name: str = "moe"):
        super().__init__()
        if num_experts < 1 or not 1 <= top_k <= num_experts:
            raise ModelError(f"a MoE layer needs 1 <= top_k <= experts, got top_k={top_k} "
                             f"with {num_experts} experts: lower top_k or add experts")
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.gate_proj = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.up_proj = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.act_fn = act if act is not None else nn.SiLU()
        self.k = top_k
        # MoeGroup attributes (see models.moe_groups).
        self.name = name
        self.recording: list[RoutingRecord] | None = None
        self.allowed: list[int] | None = None
        # Training sets this; the forward then leaves L_bal (with its graph) in
        # last_balance_loss. Off by default: a module holding a graph tensor cannot be
        # deep-copied (a distillation teacher is a deep copy).
        self.balance_loss_enabled = False
        self.last_balance_loss: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in (self.router.weight, self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(weight, std=INIT_STD)

    def extra_repr(self) -> str:
        e, h, d = self.gate_proj.shape
        return f"name={self.name!r}, experts={e}, top_k={self.k}, hidden={d}, intermediate={h}"

    # --- MoeGroup -------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return self.router.weight.shape[0]

    @property
    def top_k(self) -> int:
        return self.k

    def router_weight(self) -> torch.Tensor:
        return self.router.weight

    def expert_parameters(self) -> list[nn.Parameter]:
        return [self.gate_proj, self.up_proj, self.down_proj]

    def keep_only(self, keep: list[int]) -> None:
        if not keep or len(set(keep)) != len(keep) or not all(
                0 <= e < self.num_experts for e in keep):
            raise ModelError(f"{self.name}: keep must list distinct experts in "
                             f"0..{self.num_experts - 1}, got {keep}")
        if len(keep) < self.k:
            raise ModelError(f"{self.name}: keeping {len(keep)} experts leaves fewer than "
                             f"top_k = {self.k}: keep at least {self.k}")
        index = torch.tensor(keep, dtype=torch.long, device=self.gate_proj.device)
        with torch.no_grad():
            self.router.weight = nn.Parameter(self.router.weight[index].clone())
            self.router.out_features = len(keep)
            for name in ("gate_proj", "up_proj", "down_proj"):
                setattr(self, name, nn.Parameter(getattr(self, name)[index].clone()))
        self.allowed = None

    # --- forward --------------------------------------------------------------------
    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """f_e(x) for tokens x [T, D]."""
        return swiglu_expert(x, self.gate_proj[e], self.up_proj[e], self.down_proj[e],
                             self.act_fn)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities [T, E] (fp32), chosen experts [T, k], gates [T, k] (fp32)."""
        logits = restricted_logits(self.router(x), self.allowed)
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        available = self.num_experts if self.allowed is None else len(self.allowed)
        top_p, chosen = probs.topk(min(self.k, available), dim=-1)
        return probs, chosen, top_p / top_p.sum(dim=-1, keepdim=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.reshape(-1, hidden.shape[-1])
        probs, chosen, gates = self.route(x)
        recording = self.recording is not None
        out = torch.zeros_like(x)
        norms = torch.zeros(chosen.shape, dtype=torch.float32) if recording else None
        for e in range(self.num_experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            y = self.expert(e, x.index_select(0, token))
            # Under bf16 autocast the experts' linears return bf16 while `out` keeps the
            # hidden states' dtype: accumulate in the latter.
            out.index_add_(0, token, (y * gates[token, slot, None].to(y.dtype)).to(out.dtype))
            if recording:
                norms[token.cpu(), slot.cpu()] = y.detach().float().norm(dim=-1).cpu()
        if recording:
            self.recording.append(RoutingRecord(probs.detach().cpu(), chosen.cpu(),
                                                gates.detach().cpu(), norms))
        if self.balance_loss_enabled:
            self.last_balance_loss = balance_loss(probs, chosen, self.num_experts)
        return out.reshape(hidden.shape)
