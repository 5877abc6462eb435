"""Where a model keeps its parts, told to the engine without checking model names.

The block-sequential engine needs: the embeddings (to capture what enters block 0), the
ordered list of blocks, the linear layers inside a block, the final norm and the head
(both left dense). Hugging Face decoders expose this through `get_decoder()`,
`get_input_embeddings()`, `get_output_embeddings()` and a `ModuleList` of
`config.num_hidden_layers` blocks; a family that is shaped differently registers its own
layout function with `@register_layout(ModelClass)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from models.errors import ModelError

_LAYOUTS: dict[type, Callable[[nn.Module], DecoderLayout]] = {}


@dataclasses.dataclass
class DecoderLayout:
    embeddings: nn.Module
    blocks: nn.ModuleList
    # Qualified name of the blocks' ModuleList inside the model, e.g. "model.layers".
    blocks_name: str
    norm: nn.Module | None
    head: nn.Module | None

    def block_linears(self, index: int) -> dict[str, nn.Linear]:
        """Qualified name -> nn.Linear for every linear layer inside block `index`."""
        prefix = f"{self.blocks_name}.{index}"
        return {
            f"{prefix}.{name}": module
            for name, module in self.blocks[index].named_modules()
            if isinstance(module, nn.Linear)
        }


def register_layout(model_class: type) -> Callable:
    """Decorator: `@register_layout(MyModel) def layout(model) -> DecoderLayout`."""

    def decorate(fn: Callable[[nn.Module], DecoderLayout]) -> Callable:
        _LAYOUTS[model_class] = fn
        return fn

    return decorate


def decoder_layout(model: nn.Module) -> DecoderLayout:
    for klass in type(model).__mro__:
        if klass in _LAYOUTS:
            return _LAYOUTS[klass](model)
    return _hf_decoder_layout(model)


def _hf_decoder_layout(model: nn.Module) -> DecoderLayout:
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else model
    n_blocks = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    blocks_name, blocks = _find_block_list(model, decoder, n_blocks)
    embeddings = model.get_input_embeddings()
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    norms = [m for m in decoder.children() if "norm" in type(m).__name__.lower()]
    return DecoderLayout(embeddings, blocks, blocks_name, norms[-1] if norms else None, head)


def _find_block_list(model: nn.Module, decoder: nn.Module,
                     n_blocks: int | None) -> tuple[str, nn.ModuleList]:
    """The ModuleList of identical modules inside the decoder, `num_hidden_layers` long."""
    names = {id(module): name for name, module in model.named_modules()}
    candidates = [
        module for module in decoder.modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
        and len({type(block) for block in module}) == 1
        and (n_blocks is None or len(module) == n_blocks)
    ]
    if not candidates:
        raise ModelError(
            f"cannot find the decoder blocks of {type(model).__name__}: it is not a "
            "supported decoder (Llama, Mistral, Qwen2, Gemma families)"
        )
    blocks = max(candidates, key=len)
    return names[id(blocks)], blocks


@dataclasses.dataclass
class StackedWeights:
    """A mixture-of-experts block's stacked expert weights [E, out, in] as one reader or
    writer of the residual stream: expert e computes x W[e]^T, so a transform of the input
    dimension (W <- W Q, W <- W diag(s)) or of the output dimension (W <- Q^T W) applies
    to every expert at once by broadcasting over dim 0. Quacks like an nn.Linear where a
    residual-stream rewrite reads one: `weight`, `bias` (None)."""

    weight: nn.Parameter
    bias: None = None

    def parameters(self) -> list[nn.Parameter]:
        return [self.weight]


@dataclasses.dataclass
class ResidualSite:
    """One branch of a pre-norm block: `readers` take `norm(h)` of the residual stream h,
    `writer`'s output is added back to h (an nn.Linear, or StackedWeights for experts)."""

    norm: nn.Module
    readers: list[nn.Linear | StackedWeights]
    writer: nn.Linear | StackedWeights


@dataclasses.dataclass
class ResidualBlock:
    """A pre-norm decoder block as two residual branches (attention, then MLP), plus the
    value projection and head size that a per-head rotation of the values needs."""

    attention: ResidualSite
    mlp: ResidualSite
    value: nn.Linear
    head_dim: int


# Attribute paths of a Llama-shaped block (Llama, Mistral, Qwen2, Gemma): the two norms,
# the attention linears and the gated MLP, or a mixture-of-experts MLP (models.moe_lm:
# router + stacked gate/up/down experts). A block that holds any other parameter (q/k
# norms, Gemma2's extra norms) is refused by `residual_blocks`, so a method that rewrites
# the residual stream never skips a tensor that reads or writes it.
_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj")


def residual_blocks(layout: DecoderLayout) -> list[ResidualBlock]:
    """Where every block of `layout` reads and writes the residual stream; ModelError when
    a block is not a plain pre-norm attention + gated MLP of nn.Linear layers."""
    return [_residual_block(layout, index) for index in range(len(layout.blocks))]


def _residual_block(layout: DecoderLayout, index: int) -> ResidualBlock:
    block = layout.blocks[index]
    where = f"{layout.blocks_name}.{index}"

    def part(path: str, kind: type) -> nn.Module:
        module = block.get_submodule(path) if _has(block, path) else None
        if not isinstance(module, kind):
            raise ModelError(f"{where} has no {kind.__name__} {path}: only Llama-shaped "
                             "blocks (pre-norm attention + gated MLP) have a known residual "
                             "layout")
        return module

    attention = ResidualSite(part("input_layernorm", nn.Module),
                             [part(p, nn.Linear) for p in _ATTENTION],
                             part("self_attn.o_proj", nn.Linear))
    mlp = _moe_site(block, part("post_attention_layernorm", nn.Module))
    if mlp is None:
        mlp = ResidualSite(part("post_attention_layernorm", nn.Module),
                           [part(p, nn.Linear) for p in _MLP],
                           part("mlp.down_proj", nn.Linear))
    known = {id(p) for site in (attention, mlp)
             for module in (site.norm, *site.readers, site.writer)
             for p in module.parameters()}
    for name, param in block.named_parameters():
        if id(param) not in known:
            raise ModelError(f"{where}.{name} is a parameter outside the attention and MLP "
                             "linears and the two norms (a mixture-of-experts or otherwise "
                             "non-Llama block): its residual layout is unknown")
    value = attention.readers[2]
    head_dim = getattr(block.self_attn, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim <= 0 or value.out_features % head_dim \
            or attention.writer.in_features % head_dim:
        raise ModelError(f"{where}.self_attn has no head_dim dividing its value and output "
                         "projections")
    return ResidualBlock(attention, mlp, value, head_dim)


def _moe_site(block: nn.Module, norm: nn.Module) -> ResidualSite | None:
    """The MLP branch of a mixture-of-experts block (models.moe_lm.SparseMoeBlock): the
    router and every expert's gate/up read norm(h), every expert's down writes h (the
    gates only scale expert outputs, which a rotation of h commutes with)."""
    from models.moe_lm import SparseMoeBlock

    mlp = getattr(block, "mlp", None)
    if not isinstance(mlp, SparseMoeBlock):
        return None
    return ResidualSite(norm, [mlp.router, StackedWeights(mlp.gate_proj),
                               StackedWeights(mlp.up_proj)], StackedWeights(mlp.down_proj))


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
