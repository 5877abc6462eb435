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
    """y = x @ W^T + b with W^T stored as `weight_t` [in, out] (see the module docstring),
    plus a LoRA adapter's side branch s (x A^T) B^T when the linear has one (arXiv
    2106.09685; models/qformat/lora.py): A^T and B^T stay float tensors of their own, so a
    writer that swaps W for its packed form (found by name or by value) leaves them be."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(),
                                     requires_grad=False)
        self.bias = (None if linear.bias is None
                     else nn.Parameter(linear.bias.detach().clone(), requires_grad=False))
        self.lora_a_t, self.lora_b_t, self.lora_scale = lora_side_tensors(lora_parts(linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight_t
        if self.lora_a_t is not None:
            y = y + (x @ self.lora_a_t) @ self.lora_b_t * self.lora_scale
        return y if self.bias is None else y + self.bias


def lora_side_tensors(lora: tuple[torch.Tensor, torch.Tensor, float] | None
                      ) -> tuple[nn.Parameter | None, nn.Parameter | None, float]:
    """(A^T, B^T, s) of an adapter (A [r, in], B [out, r], s) as frozen float32 parameters
    of their own, the side branch s (x A^T) B^T's operands; (None, None, 0.0) without one."""
    if lora is None:
        return None, None, 0.0
    a, b, scale = lora
    return (nn.Parameter(a.detach().float().t().contiguous(), requires_grad=False),
            nn.Parameter(b.detach().float().t().contiguous(), requires_grad=False), scale)


def lora_parts(linear) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(A [r, in], B [out, r], s) of the adapter on `linear`: an nn.Linear with a LoRA
    forward hook, or a weight record with a `lora` field (export.llm.decoder_weights)."""
    from models.qformat.lora import LoraAdapter

    parts = getattr(linear, "lora", None)
    if parts is not None:
        return parts
    for hook in getattr(linear, "_forward_hooks", {}).values():
        if isinstance(hook, LoraAdapter):
            return hook.lora_A, hook.lora_B, hook.scale
    return None

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

def scatter_write(cache: torch.Tensor, new: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
    """cache [H, C, D] with rows `positions` [T] replaced by new [H, T, D] (ONNX, LiteRT)."""
    heads, tokens, dim = new.shape
    return cache.scatter(1, positions.view(1, tokens, 1).expand(heads, tokens, dim), new)


def blend_write(cache: torch.Tensor, new: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
    """The same write as matrix products: with one-hot P [T, C] of the positions,
        cache' = cache * (1 - 1^T P) + P^T new
    for converters whose scatter needs equal index and data shapes (Core ML)."""
    slots = torch.arange(cache.shape[1], dtype=positions.dtype)
    one_hot = (positions.unsqueeze(1) == slots.unsqueeze(0)).to(cache.dtype)  # [T, C]
    keep = 1.0 - one_hot.sum(dim=0).unsqueeze(-1)  # [C, 1]
    return cache * keep + one_hot.t() @ new


CACHE_WRITES = {"scatter": scatter_write, "blend": blend_write}


class CachedAttention(nn.Module):
    """Grouped-query attention over a fixed-size cache (Llama's rotary convention)."""

    def __init__(self, attn: nn.Module, shape: DecoderShape, cache_write: str = "scatter"):
        super().__init__()
        self.cache_write = CACHE_WRITES[cache_write]
        self.q_proj, self.k_proj = ExportLinear(attn.q_proj), ExportLinear(attn.k_proj)
        self.v_proj, self.o_proj = ExportLinear(attn.v_proj), ExportLinear(attn.o_proj)
        self.shape = shape
        self.scaling = float(getattr(attn, "scaling", shape.head_dim ** -0.5))

    def write_cache(self, keys, values, k, v, positions):
        return (self.cache_write(keys, k, positions), self.cache_write(values, v, positions))

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
        keys, values = self.write_cache(keys, values, k, v, positions)
        # Grouped-query attention without repeating the cache: the query heads that share
        # a key/value head are stacked along the token axis ([kv, groups * T, D]), so each
        # kv head is read once by one batched matmul. (Expanding the cache to every query
        # head lowers to BROADCAST_TO, which LiteRT ran at about 6 ms per layer at context
        # 256 on this machine: most of a decode step.) Head h = kv * groups + j, as in
        # Llama's repeat_kv.
        groups = s.heads // s.kv_heads
        # (unflatten/flatten keep the token count symbolic for a dynamic-length export)
        stacked = q.contiguous().unflatten(0, (s.kv_heads, groups)).flatten(1, 2)
        scores = (stacked @ keys.transpose(1, 2)).unflatten(1, (groups, tokens))
        scores = scores.flatten(0, 1) * self.scaling + mask  # [H, T, C]
        probs = torch.softmax(scores, dim=-1).unflatten(0, (s.kv_heads, groups)).flatten(1, 2)
        attended = (probs @ values).unflatten(1, (groups, tokens)).flatten(0, 1)
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
    """`mlp`: an already re-authored MLP (a mixture of experts, export.llm.moe_mlp);
    by default the block's gated MLP."""

    def __init__(self, block: nn.Module, shape: DecoderShape, eps: float, activation: str,
                 cache_write: str = "scatter", mlp: nn.Module | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(block.input_layernorm, eps)
        self.self_attn = CachedAttention(block.self_attn, shape, cache_write)
        self.post_attention_layernorm = RMSNorm(block.post_attention_layernorm, eps)
        self.mlp = mlp if mlp is not None else GatedMLP(block.mlp, activation)

    def forward(self, x, cos, sin, mask, positions, keys, values):
        attended, keys, values = self.self_attn(self.input_layernorm(x), cos, sin, mask,
                                                positions, keys, values)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), keys, values
