"""Linears that read the same input, written as one: q/k/v of a block, gate/up of its MLP.

    [y_1 | y_2 | ... ] = x [W_1; W_2; ...]^T        (the weights stacked along outputs)

At decode every node costs a kernel dispatch and a pass over the input activations, and
onnxruntime's MatMulNBits splits one matmul's output columns across threads: three
skinny matmuls cost more than one three times as wide. The stacking is exact: rows of
an affine-quantized weight (codes, scales, zero points) are independent, so stacking
two quantized weights row-wise gives the quantized weight of the stack. It needs the
parts to share the format: all float, or all affine with the same bits, group size and
input scale (AWQ scales the input, which the parts must then share). Anything else
(a palette, mixed formats) stays separate, and so do linears with LoRA adapters.
"""

from __future__ import annotations

import torch

from export.llm.decoder_weights import LinearWeight
from models.qformat import AffineQuantized


def fuse_linears(parts: list[LinearWeight], name: str) -> LinearWeight | None:
    """One LinearWeight named `name` computing the parts' outputs side by side, or None
    when they cannot be stacked (see the module docstring)."""
    if len(parts) < 2 or any(p.lora is not None for p in parts):
        return None  # a LoRA side branch reads its own linear's output (decoder_graph)
    biases = [p.bias for p in parts]
    if any(b is not None for b in biases):
        biases = [torch.zeros(_outputs(p)) if b is None else b for p, b in zip(parts, biases,
                                                                                strict=True)]
        bias = torch.cat(biases)
    else:
        bias = None
    if all(p.packed is None for p in parts):
        return LinearWeight(name, torch.cat([p.weight for p in parts]), None, bias)
    packed = [p.packed for p in parts]
    if not all(isinstance(w, AffineQuantized) for w in packed):
        return None
    first = packed[0]
    same = all(w.bits == first.bits and w.group_size == first.group_size
               and w.shape[1] == first.shape[1] and _same_input_scale(w, first)
               for w in packed[1:])
    if not same:
        return None
    symmetric = all(w.zeros is None for w in packed)
    stacked = AffineQuantized(
        codes=torch.cat([w.codes for w in packed]),
        scales=torch.cat([w.scales for w in packed]),
        zeros=None if symmetric else torch.cat([w.zero_points() for w in packed]),
        bits=first.bits, group_size=first.group_size, input_scale=first.input_scale)
    return LinearWeight(name, None, stacked, bias)


def _outputs(part: LinearWeight) -> int:
    return (part.packed.shape if part.packed is not None else part.weight.shape)[0]


def _same_input_scale(a: AffineQuantized, b: AffineQuantized) -> bool:
    if a.input_scale is None or b.input_scale is None:
        return a.input_scale is None and b.input_scale is None
    return torch.equal(a.input_scale, b.input_scale)
