"""`ExportDecoder.from_hf(module, max_context)`: a Hugging Face Llama-family causal LM
rebuilt from `export.llm.decoder`'s parts, with the same weights and the same function.

Supported: Llama-style blocks (RMSNorm, grouped-query attention with rotary embeddings of
any static kind, since the rotary module's own inv_freq and attention scaling are read;
gated SiLU MLP, or a Mixtral-routed mixture of experts (the toolkit's SparseMoeBlock or
transformers' Mixtral block, export.llm.moe_mlp); optional q/k/v biases as in Qwen2), tied
or separate LM head. Anything else fails with an error that names the part, rather than
exporting a different model.
"""

from __future__ import annotations

import torch
from torch import nn

from export.errors import ExportError
from export.llm.decoder import (
    SUPPORTED_ACTIVATIONS,
    DecoderBlock,
    DecoderShape,
    ExportLinear,
    RMSNorm,
)
from export.llm.moe_mlp import MoeMLP, is_moe_mlp
from models.adapter import decoder_layout

# A large negative number instead of -inf: a fully masked row then gives a uniform
# softmax rather than NaN, and every runtime handles it in fp16 as well.
MASKED = -1e4


class ExportDecoder(nn.Module):
    def __init__(self, source: nn.Module, max_context: int, cache_write: str = "scatter"):
        super().__init__()
        config = source.config
        layout = decoder_layout(source)
        self.shape = _decoder_shape(config, max_context)
        _check_blocks(layout.blocks, config)
        activation = getattr(config, "hidden_act", "silu")
        if activation not in SUPPORTED_ACTIVATIONS:
            raise ExportError(f"activation {activation!r} in the MLP is not supported by the "
                              f"LLM exporter: supported are {', '.join(SUPPORTED_ACTIVATIONS)}")
        eps = float(getattr(config, "rms_norm_eps", 1e-6))
        self.embed = nn.Parameter(layout.embeddings.weight.detach().clone(),
                                  requires_grad=False)
        self.layers = nn.ModuleList(
            DecoderBlock(b, self.shape, eps, activation, cache_write,
                         mlp=_moe_mlp(b.mlp, activation, f"{layout.blocks_name}.{i}.mlp"))
            for i, b in enumerate(layout.blocks))
        self.norm = RMSNorm(layout.norm, eps)
        rotary = _rotary_module(source)
        self.register_buffer("inv_freq", rotary.inv_freq.detach().float().clone())
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.tied = layout.head.weight is layout.embeddings.weight
        self.lm_head = None if self.tied else ExportLinear(layout.head)
        # Export name of each linear -> the source model's name (the artifact's key).
        self.source_names = {
            f"layers.{i}.{name}": f"{layout.blocks_name}.{i}.{name}"
            for i, block in enumerate(layout.blocks)
            for name, module in block.named_modules() if isinstance(module, nn.Linear)}
        self.eval()

    @classmethod
    def from_hf(cls, source: nn.Module, max_context: int,
                cache_write: str = "scatter") -> ExportDecoder:
        """`cache_write`: "scatter" or "blend" (see export.llm.decoder); same function."""
        return cls(source, max_context, cache_write)

    def empty_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = self.shape.cache_shape()
        return torch.zeros(shape), torch.zeros(shape)

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions, cos, sin, mask = step_inputs(position, input_ids.shape[1], self.inv_freq,
                                                self.rope_scale, self.shape.max_context)
        x = self.embed[input_ids[0]]  # [T, hidden]
        new_keys, new_values = [], []
        for index, layer in enumerate(self.layers):
            x, k, v = layer(x, cos, sin, mask, positions, keys[index], values[index])
            new_keys.append(k)
            new_values.append(v)
        x = self.norm(x)
        logits = x @ self.embed.t() if self.lm_head is None else self.lm_head(x)
        return logits.unsqueeze(0), torch.stack(new_keys), torch.stack(new_values)


def step_inputs(position: torch.Tensor, tokens: int, inv_freq: torch.Tensor,
                rope_scale: float, max_context: int):
    """(positions [T], cos, sin [T, D], mask [T, max_context]) of a call that feeds
    `tokens` tokens from `position`: the rotary tables at positions p .. p+T-1 and the
    causal mask over the cache slots (0 where slot c <= p + t, MASKED elsewhere)."""
    positions = position + torch.arange(tokens, dtype=position.dtype)
    freqs = positions.to(torch.float32).unsqueeze(1) * inv_freq.unsqueeze(0)
    angles = torch.cat((freqs, freqs), dim=-1)  # [T, D]
    cos, sin = angles.cos() * rope_scale, angles.sin() * rope_scale
    slots = torch.arange(max_context, dtype=position.dtype)
    visible = slots.unsqueeze(0) <= positions.unsqueeze(1)  # [T, C]
    return positions, cos, sin, torch.where(visible, 0.0, MASKED)


def _decoder_shape(config, max_context: int) -> DecoderShape:
    if not isinstance(max_context, int) or max_context < 2:
        raise ExportError(f"max context {max_context!r} must be an integer >= 2, e.g. 512")
    limit = getattr(config, "max_position_embeddings", None)
    if limit and max_context > limit:
        raise ExportError(f"max context {max_context} exceeds the model's "
                          f"max_position_embeddings ({limit}): choose at most {limit}")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and max_context > window:
        raise ExportError(f"the model uses sliding-window attention ({window} tokens), which "
                          f"the exporter does not implement: choose --max-context <= {window}")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return DecoderShape(layers=config.num_hidden_layers, heads=heads,
                        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                        head_dim=head_dim, hidden=config.hidden_size,
                        vocab=config.vocab_size, max_context=max_context)


_BLOCK_PARTS = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")
_UNSUPPORTED_PARTS = ("self_attn.q_norm", "self_attn.k_norm", "pre_feedforward_layernorm",
                      "post_feedforward_layernorm", "mlp.experts")


# Llama-shaped families whose arithmetic differs in ways the parts above do not implement.
_DIFFERENT_ARITHMETIC = {
    "gemma": "(1 + w) RMSNorm and sqrt(hidden)-scaled embeddings",
    "gemma2": "(1 + w) RMSNorm, logit soft-capping and sliding windows",
    "gemma3_text": "(1 + w) RMSNorm, q/k norms and sliding windows",
}


def _check_blocks(blocks: nn.ModuleList, config) -> None:
    different = _DIFFERENT_ARITHMETIC.get(getattr(config, "model_type", ""))
    if different:
        raise ExportError(f"{config.model_type} models use {different}, which the LLM "
                          "exporter does not implement (Llama, Mistral and Qwen2 are "
                          "supported)")
    names = {name for name, _ in blocks[0].named_modules()}
    moe = is_moe_mlp(blocks[0].mlp)  # its experts are stacked tensors, not linears
    if "mlp.experts" in names and not moe:
        raise ExportError(f"the {type(blocks[0].mlp).__name__} experts of this "
                          f"{config.model_type} model are not supported by the LLM exporter: "
                          "it exports Mixtral-routed MoE layers (upcycled, Mixtral) only")
    for part in _BLOCK_PARTS:
        if part not in names and not (moe and part.startswith("mlp.")):
            raise ExportError(f"block 0 of this {config.model_type} model has no {part}: the "
                              "LLM exporter supports Llama-style decoder blocks only")
    for part in _UNSUPPORTED_PARTS:
        if part in names and not (moe and part.startswith("mlp.")):
            raise ExportError(f"layer {part} of this {config.model_type} model is not "
                              "supported by the LLM exporter (Llama-style blocks only)")
    if getattr(blocks[0].self_attn.o_proj, "bias", None) is not None:
        raise ExportError("an o_proj bias is not supported by the LLM exporter")


def _moe_mlp(mlp: nn.Module, activation: str, name: str) -> MoeMLP | None:
    """The re-authored mixture of experts of a MoE block, None for a dense MLP."""
    return MoeMLP.from_block(mlp, activation, name) if is_moe_mlp(mlp) else None


def _rotary_module(source: nn.Module) -> nn.Module:
    rotary = getattr(getattr(source, "model", source), "rotary_emb", None)
    if rotary is None or not isinstance(getattr(rotary, "inv_freq", None), torch.Tensor):
        raise ExportError("the model has no rotary embedding with a static inv_freq "
                          "(model.rotary_emb): the LLM exporter supports rotary Llama-style "
                          "models only")
    if getattr(rotary, "rope_type", "default") == "dynamic":
        raise ExportError("dynamic NTK rotary scaling changes with the sequence length and "
                          "cannot be exported with a fixed context")
    return rotary
