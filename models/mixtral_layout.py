"""Our MoE LM (a Llama decoder whose MLPs are `models.moe_lm.SparseMoeBlock`) <-> the
standard Mixtral layout of transformers (MixtralConfig / MixtralForCausalLM, arXiv
2401.04088), as pure functions over configs and state dicts.

Mixtral's sparse block computes what ours does: router `gate` W_r [E, D] without bias,
p = softmax(W_r x) in fp32, the top-k of p renormalised to sum 1, y = sum_i g_i f_i(x)
with f_i a SwiGLU expert. So converting is renaming and (un)stacking, nothing numeric:

    ours (model.layers.i.mlp.)      Mixtral on disk (model.layers.i.block_sparse_moe.)
    router.weight     [E, D]        gate.weight
    gate_proj[e]      [H, D]        experts.e.w1.weight
    down_proj[e]      [D, H]        experts.e.w2.weight
    up_proj[e]        [H, D]        experts.e.w3.weight

The right column is what `MixtralForCausalLM.save_pretrained` writes (and what Mixtral
checkpoints on the Hub hold). transformers 5 keeps the experts fused in memory
(`mlp.experts.gate_up_proj` [E, 2H, D] = cat(w1, w3, dim=1), `mlp.experts.down_proj`,
`mlp.gate.weight`) and renames on load; `from_mixtral_state` accepts both spellings.

The layout fits only when a MixtralConfig can say everything the model is: a Llama base
(bias-free attention and MLP), a MoE MLP in every layer, the same expert count, top-k and
expert width everywhere. `mixtral_misfit` names what does not fit; such a model keeps
the toolkit's own layout (Llama config + stacked tensors, read back with toolkit.json).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from models.errors import ModelError
from models.moe_lm import SparseMoeBlock

MIXTRAL_MODEL_TYPE = "mixtral"
# Config fields a Llama config and a Mixtral config share with the same meaning.
SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
                 "initializer_range", "rms_norm_eps", "use_cache", "pad_token_id",
                 "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_parameters",
                 "attention_dropout")
_EXPERT_PARTS = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
_OUR_EXPERT = re.compile(r"^(.*)\.mlp\.(gate_proj|up_proj|down_proj)$")
_OUR_ROUTER = re.compile(r"^(.*)\.mlp\.router\.weight$")
_DISK_EXPERT = re.compile(r"^(.*)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w[123])\.weight$")
_FUSED_EXPERT = re.compile(r"^(.*)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_MIXTRAL_ROUTER = re.compile(r"^(.*)\.(?:block_sparse_moe|mlp)\.gate\.weight$")


def _moe_blocks(module: nn.Module) -> list[nn.Module | None]:
    """The MLP of every decoder layer if it is one of our MoE blocks, else None."""
    layers = module.model.layers if hasattr(module, "model") else []
    return [layer.mlp if isinstance(layer.mlp, SparseMoeBlock) else None for layer in layers]


def mixtral_misfit(module: nn.Module) -> str | None:
    """Why `module` cannot be written in the Mixtral layout, or None when it fits exactly."""
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        return f"its base is {model_type!r}, and Mixtral's layers are Llama's"
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            return f"its config sets {flag}, which Mixtral has not"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "its config sets pretraining_tp, which Mixtral has not"
    blocks = _moe_blocks(module)
    if not blocks or any(b is None for b in blocks):
        return "not every decoder layer is a mixture-of-experts layer"
    shapes = {(tuple(b.gate_proj.shape), b.top_k) for b in blocks}
    if len(shapes) > 1:
        counts = [b.num_experts for b in blocks]
        return f"its layers differ in experts, top_k or width (experts per layer {counts})"
    return None


def mixtral_config(module: nn.Module):
    """The MixtralConfig describing `module` (call only when `mixtral_misfit` is None)."""
    from transformers import MixtralConfig

    source = module.config.to_dict()
    block = _moe_blocks(module)[0]
    experts, intermediate, _ = block.gate_proj.shape
    fields = {k: source[k] for k in SHARED_FIELDS if k in source}
    config = MixtralConfig(**fields, intermediate_size=intermediate,
                           num_local_experts=experts, num_experts_per_tok=block.top_k,
                           sliding_window=None)
    config.architectures = ["MixtralForCausalLM"]
    config.dtype = source.get("dtype")
    return config


def to_mixtral_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in Mixtral's on-disk names (experts unstacked, one tensor each)."""
    out: dict[str, torch.Tensor] = {}
    parts = {ours: disk for disk, ours in _EXPERT_PARTS.items()}
    for key, tensor in state.items():
        expert, router = _OUR_EXPERT.match(key), _OUR_ROUTER.match(key)
        if router:
            out[f"{router[1]}.block_sparse_moe.gate.weight"] = tensor
        elif expert:
            for e, weight in enumerate(tensor.unbind(0)):
                name = f"{expert[1]}.block_sparse_moe.experts.{e}.{parts[expert[2]]}.weight"
                out[name] = weight.clone()  # its own storage: safetensors refuses shared
        else:
            out[key] = tensor
    return out


def from_mixtral_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A Mixtral state dict (on-disk per-expert names or transformers' fused in-memory
    ones) in our names, each layer's experts stacked. `source` names the file in errors."""
    out: dict[str, torch.Tensor] = {}
    per_expert: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, tensor in state.items():
        disk, fused, router = (_DISK_EXPERT.match(key), _FUSED_EXPERT.match(key),
                               _MIXTRAL_ROUTER.match(key))
        if router:
            out[f"{router[1]}.mlp.router.weight"] = tensor
        elif disk:
            per_expert.setdefault((disk[1], disk[3]), {})[int(disk[2])] = tensor
        elif fused and fused[2] == "gate_up_proj":
            gate, up = tensor.chunk(2, dim=1)  # gate rows first, as MixtralExperts splits
            out[f"{fused[1]}.mlp.gate_proj"] = gate.contiguous()
            out[f"{fused[1]}.mlp.up_proj"] = up.contiguous()
        elif fused:
            out[f"{fused[1]}.mlp.down_proj"] = tensor
        else:
            out[key] = tensor
    for (prefix, part), experts in per_expert.items():
        missing = sorted(set(range(max(experts) + 1)) - set(experts))
        if missing:
            raise ModelError(f"{source} lacks {prefix}.block_sparse_moe.experts.{missing[0]}."
                             f"{part}.weight: restore the checkpoint's missing tensor")
        out[f"{prefix}.mlp.{_EXPERT_PARTS[part]}"] = torch.stack(
            [experts[e] for e in range(len(experts))])
    return out


def dense_config_of_mixtral(config):
    """The LlamaConfig of a Mixtral config's dense base, which `install_moe_layers` turns
    back into our MoE model. Refuses what a Llama decoder would compute differently."""
    from transformers import LlamaConfig

    source = config.to_dict()
    window = source.get("sliding_window")
    if window and window < source.get("max_position_embeddings", window + 1):
        raise ModelError(f"the Mixtral config sets a {window}-token sliding window, which "
                         "the toolkit's MoE decoder does not implement: set sliding_window "
                         "to null in config.json if the model was trained without one")
    fields = {k: source[k] for k in SHARED_FIELDS if k in source}
    dense = LlamaConfig(**fields, intermediate_size=source["intermediate_size"],
                        attention_bias=False, mlp_bias=False)
    dense.architectures = ["LlamaForCausalLM"]
    return dense, int(source["num_local_experts"]), int(source["num_experts_per_tok"])
