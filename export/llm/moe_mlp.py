"""A mixture-of-experts MLP re-authored for export with static shapes (Mixtral routing,
arXiv 2401.04088, as models.moe_lm computes it):

    p = softmax(W_r x)        (fp32)          S = top-k of p,  w_i = p_i / sum_{j in S} p_j
    G[t, e] = sum_j [S_j(t) = e] w_j(t)       gates, zero for the experts not chosen
    y = sum_e G[:, e] * f_e(x),  f_e(x) = W_down^e (act(W_gate^e x) * (W_up^e x))

Every expert runs densely on every token and the gates zero the ones not chosen: exact
(an unchosen expert adds 0 * f_e(x)), at the cost of E experts per token instead of k.
The alternative, gathering the k chosen experts' weights by index, is cheaper for batch-1
decode, but it makes the weights a runtime-selected tensor: the graph then holds a
data-dependent Gather over all expert weights, which a weight-compression rewrite (ONNX
MatMulNBits, Core ML palettes) cannot carry and some converters do not lower. Dense
experts are two batched matrix products ([E, T, D] @ [E, D, 2H], then @ [E, H, D]) with no
control flow, which every target converts. The gates are built from a one-hot comparison
rather than a scatter, since Core ML's scatter needs equal index and data shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from export.errors import ExportError
from export.llm.decoder import SUPPORTED_ACTIVATIONS, ExportLinear
from models.moe_lm import SparseMoeBlock

# transformers' own Mixtral block, exported from its weights (the same arithmetic).
MIXTRAL_BLOCK = "MixtralSparseMoeBlock"


def is_moe_mlp(mlp: nn.Module) -> bool:
    return isinstance(mlp, SparseMoeBlock) or type(mlp).__name__ == MIXTRAL_BLOCK


class MoeMLP(nn.Module):
    """[T, D] -> [T, D]; the router is `router` (an ExportLinear) so that a quantized
    router keeps its source name (`<block>.mlp.router`)."""

    def __init__(self, router: nn.Linear, gate: torch.Tensor, up: torch.Tensor,
                 down: torch.Tensor, top_k: int, activation: str):
        super().__init__()
        experts, self.intermediate, _ = gate.shape
        self.router = ExportLinear(router)
        self.gate_up_t = nn.Parameter(torch.cat((gate, up), dim=1).transpose(1, 2)
                                      .detach().contiguous(), requires_grad=False)
        self.down_t = nn.Parameter(down.transpose(1, 2).detach().contiguous(),
                                   requires_grad=False)
        self.register_buffer("expert_ids", torch.arange(experts))
        self.top_k = top_k
        self.act = SUPPORTED_ACTIVATIONS[activation]

    @classmethod
    def from_block(cls, mlp: nn.Module, activation: str, name: str) -> MoeMLP:
        """From our SparseMoeBlock or transformers' MixtralSparseMoeBlock."""
        if isinstance(mlp, SparseMoeBlock):
            if mlp.allowed is not None:
                raise ExportError(f"{name} has its routing restricted to experts "
                                  f"{mlp.allowed}: drop the other experts (keep_only) before "
                                  "exporting")
            return cls(mlp.router, mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.top_k,
                       activation)
        weight = mlp.gate.weight
        router = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        router.weight = nn.Parameter(weight.detach())
        gate, up = mlp.experts.gate_up_proj.chunk(2, dim=1)
        return cls(router, gate, up, mlp.experts.down_proj, mlp.top_k, activation)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """G [T, E]: the renormalised top-k router probabilities, zero elsewhere."""
        probs = torch.softmax(self.router(x).float(), dim=-1)
        top_p, chosen = probs.topk(self.top_k, dim=-1)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)
        one_hot = (chosen.unsqueeze(-1) == self.expert_ids).to(weights.dtype)  # [T, k, E]
        return (one_hot * weights.unsqueeze(-1)).sum(dim=1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x.unsqueeze(0) @ self.gate_up_t  # [E, T, 2H]
        gate, up = hidden[..., :self.intermediate], hidden[..., self.intermediate:]
        experts = (self.act(gate) * up) @ self.down_t  # [E, T, D]
        return (experts * self.gates(x).t().unsqueeze(-1)).sum(dim=0)
