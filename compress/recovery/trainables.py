"""The free parameters of one compressed block, as fp32 leaves an optimizer can move, and
the block tensors they stand for.

Each term keeps what compression fixed and frees only the rest, so whatever training does
the block is still what the stored form means:

    norm weight           g                      (trained as is)
    pruned linear         W = V * M              (M = 1 where W was nonzero: zeros stay 0)
    affine quantized      W = s0 f (c - z) / a   (codes c, zero points z, AWQ scale a fixed;
                                                  the per-group factor f starts at 1)
    palettized            W[r, j] = t0 f [r // R, i[r, j]]   (indices i fixed; a table entry
                                                  that is 0 stays 0 whatever its factor)

Scales and tables are stored in fp16, so `stored()` rounds them; the caller measures the
block with the rounded, stored form before it accepts a result.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from models.qformat import AffineQuantized, PaletteQuantized, QuantizedWeight


@dataclasses.dataclass
class Term:
    """One block tensor (`name`, e.g. "mlp.down_proj.weight") computed from a free leaf."""

    name: str
    free: torch.Tensor  # fp32 leaf with requires_grad
    kind: str  # "norms", "weights" or "scales": which learning rate it takes
    linear: str | None = None  # the quantized linear's name, for "scales"
    mask: torch.Tensor | None = None  # "weights": where the weight may be nonzero
    base: torch.Tensor | None = None  # "scales": s0 [out, groups] or the tables t0
    packed: QuantizedWeight | None = None  # "scales": the stored form trained from

    def value(self) -> torch.Tensor:
        """The block tensor, differentiable in `free`."""
        if self.kind == "norms":
            return self.free
        if self.kind == "weights":
            return self.free * self.mask
        q = self.packed
        if isinstance(q, AffineQuantized):
            # (c - z) / a is rebuilt from the uint8 codes each call rather than kept: a
            # full fp32 copy of every quantized weight would double the block's memory.
            steps = q.codes.float() - q.zero_points().float().repeat_interleave(
                q.group_size, dim=1)
            if q.input_scale is not None:
                steps = steps / q.input_scale.float()
            return (self.base * self.free).repeat_interleave(q.group_size, dim=1) * steps
        tables = (self.base * self.free)[torch.arange(q.shape[0]) // q.group_rows]
        return torch.gather(tables, 1, q.indices.long())

    def free_count(self) -> int:
        """Scalars that can move (a pruned linear's zeros cannot)."""
        return int(self.mask.sum()) if self.mask is not None else self.free.numel()

    def stored(self) -> QuantizedWeight:
        """The packed form with the trained fp16 scales or tables (codes unchanged)."""
        rounded = (self.base * self.free.detach()).to(torch.float16)
        if isinstance(self.packed, AffineQuantized):
            return dataclasses.replace(self.packed, scales=rounded)
        return dataclasses.replace(self.packed, lut=rounded)


def build_terms(block: nn.Module, quantized: dict[str, QuantizedWeight],
                parts: frozenset[str]) -> list[Term]:
    """The terms of `block` for the parts asked: norm weights (and biases), the scales of
    the linears in `quantized` (names relative to the block), and pruned linears that are
    not quantized. Dense float linears stay fixed: nothing compressed them."""
    terms: list[Term] = []
    for module_name, module in block.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nn.Linear):
            if module_name in quantized:
                if "scales" in parts:
                    terms.append(_scale_term(f"{prefix}weight", module_name,
                                             quantized[module_name]))
            elif "weights" in parts:
                weight = module.weight.detach()
                mask = weight != 0
                if bool(mask.any()) and not bool(mask.all()):
                    terms.append(Term(f"{prefix}weight", _leaf(weight * mask), "weights",
                                      mask=mask))
        elif "norms" in parts and "norm" in type(module).__name__.lower():
            for name, param in module.named_parameters(recurse=False):
                terms.append(Term(f"{prefix}{name}", _leaf(param.detach()), "norms"))
    return terms


def _scale_term(name: str, linear: str, q: QuantizedWeight) -> Term:
    if isinstance(q, AffineQuantized | PaletteQuantized):
        base = (q.scales if isinstance(q, AffineQuantized) else q.lut).float()
        return Term(name, _leaf(torch.ones_like(base)), "scales", linear=linear, base=base,
                    packed=q)
    raise TypeError(f"{linear}: unknown quantized form {type(q).__name__}")


def _leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float32).clone().requires_grad_(True)


def stored_value(term: Term) -> torch.Tensor:
    """What the block holds for `term` once accepted: the dequantized stored form for a
    quantized linear (the artifact's exact meaning), else the trained tensor."""
    with torch.no_grad():
        if term.kind == "scales":
            return term.stored().dequantize()
        return term.value().detach()
