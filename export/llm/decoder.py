"""A Llama-family decoder re-authored for on-device runtimes.

The Hugging Face module grows its cache as Python objects; a phone runtime wants fixed
shapes. This module holds the key/value cache as two tensors of a fixed maximum context C
that go in and come out of every call:

    forward(input_ids [1, T], position [1], keys [L, Hkv, C, D], values [L, Hkv, C, D])
        -> logits [1, T, V], keys', values'

`position` is the index of the first of the T new tokens; their keys and values are
written at positions p .. p+T-1 and query t attends to keys 0 .. p+t (causal mask over the
whole cache, so unwritten slots never count). Prefill is T = prompt length, decode T = 1:
one graph where a format has one entry point, two signatures where it has several.

Every linear is `x @ weight_t` with its weight stored transposed under the source layer's
name (`<name>.weight_t`), so a format writer can find each weight in the exported graph
by name and replace it with its compressed form (e.g. ONNX MatMulNBits).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_ACTIVATIONS = {"silu": F.silu}

@dataclasses.dataclass(frozen=True)
class DecoderShape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    max_context: int

    def cache_shape(self) -> tuple[int, int, int, int]:
        return (self.layers, self.kv_heads, self.max_context, self.head_dim)

class ExportLinear(nn.Module):
    """y = x @ W^T + b with W^T stored as `weight_t` [in, out] (see the module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(),
                                     requires_grad=False)
        self.bias = (None if linear.bias is None
                     else nn.Parameter(linear.bias.detach().clone(), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias

class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g, computed in fp32 as the Llama reference does."""

    def __init__(self, norm: nn.Module, eps: float):
        super().__init__()
        self.weight = nn.Parameter(norm.weight.detach().clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

class CachedAttention(nn.Module):
    """Grouped-query attention over a fixed-size cache (Llama's rotary convention)."""

    def __init__(self, attn: nn.Module, shape: DecoderShape):
        super().__init__()
        self.q_proj, self.k_proj = ExportLinear(attn.q_proj), ExportLinear(attn.k_proj)
        self.v_proj, self.o_proj = ExportLinear(attn.v_proj), ExportLinear(attn.o_proj)
        self.shape = shape
        self.scaling = float(getattr(attn, "scaling", shape.head_dim ** -0.5))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.shape
        tokens = x.shape[0]  # x: [T, hidden]
        q = self.q_proj(x).view(tokens, s.heads, s.head_dim).transpose(0, 1)
        k = self.k_proj(x).view(tokens, s.kv_heads, s.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(tokens, s.kv_heads, s.head_dim).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # Write the new keys/values at their positions: scatter keeps every shape static.
        index = positions.view(1, tokens, 1).expand(s.kv_heads, tokens, s.head_dim)
        keys = keys.scatter(1, index, k)
        values = values.scatter(1, index, v)
        groups = s.heads // s.kv_heads
        all_k = keys.unsqueeze(1).expand(s.kv_heads, groups, s.max_context, s.head_dim)
        all_v = values.unsqueeze(1).expand(s.kv_heads, groups, s.max_context, s.head_dim)
        all_k = all_k.reshape(s.heads, s.max_context, s.head_dim)
        all_v = all_v.reshape(s.heads, s.max_context, s.head_dim)
        scores = (q @ all_k.transpose(1, 2)) * self.scaling + mask  # [H, T, C]
        attended = torch.softmax(scores, dim=-1) @ all_v  # [H, T, D]
        out = self.o_proj(attended.transpose(0, 1).reshape(tokens, s.heads * s.head_dim))
        return out, keys, values

class GatedMLP(nn.Module):
    def __init__(self, mlp: nn.Module, activation: str):
        super().__init__()
        self.gate_proj, self.up_proj = ExportLinear(mlp.gate_proj), ExportLinear(mlp.up_proj)
        self.down_proj = ExportLinear(mlp.down_proj)
        self.act = SUPPORTED_ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))

class DecoderBlock(nn.Module):
    def __init__(self, block: nn.Module, shape: DecoderShape, eps: float, activation: str):
        super().__init__()
        self.input_layernorm = RMSNorm(block.input_layernorm, eps)
        self.self_attn = CachedAttention(block.self_attn, shape)
        self.post_attention_layernorm = RMSNorm(block.post_attention_layernorm, eps)
        self.mlp = GatedMLP(block.mlp, activation)

    def forward(self, x, cos, sin, mask, positions, keys, values):
        attended, keys, values = self.self_attn(self.input_layernorm(x), cos, sin, mask,
                                                positions, keys, values)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), keys, values
