"""The embedding table and LM head inside the mixed-bit budget (palettize's target_bits
with `table_bits`).

A decoder's table is a large share of a small model (SmolLM2-135M: 28M of 135M weights)
and, tied, it is also the head that decode reads whole every token. Exports store it
quantized with `--embedding-bits B` (round-to-nearest per row in groups of
TABLE_GROUP inputs, asymmetric: T[r, j] ~ scale[r, j // g] (code[r, j] - zero[r, j // g]),
export/llm/table_quant.py); here the allocation chooses B among `table_bits` like any
layer's width:

    entry "table"  n = table weights (+ an untied head's),  q(B) = stored bits per weight
                   of that quantizer (codes, scales, zero points),
                   s(B) = measured next-token KL with the table (and head) at B bits

The chosen width is applied in the model as the quantizer's own dequantized values (the
artifact keeps the table float, so transformers still opens it, but every value lies on
the B-bit grid, so evaluation measures the quantized table), and the manifest records
it; `toolkit export` then uses it as the default `--embedding-bits`. The export
quantizes those values again: re-deriving each group's float16 scale moves a few 8-bit
codes by one step, adding an RMS error well under the first rounding's
(tests/compress/test_table_bits.py holds it to at most 2% of the codes and 0.25x). Storing the codes
themselves in the artifact would remove even that; the artifact format has no packed
table yet.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.errors import CompressError
from compress.quant.mixed_bits import LayerChoices
from compress.quant.rtn import rtn_quantize
from compress.quant.sensitivity import OutputKL
from models.adapter import DecoderLayout
from models.qformat import AffineQuantized

# The widths and group size `toolkit export --embedding-bits` stores a table in.
TABLE_BITS = (4, 8)
TABLE_GROUP = 32
TABLE_ENTRY = "table"  # the allocation's name for the table (and head)


def check_table_bits(choices: object) -> tuple[int, ...]:
    """The table widths as a sorted tuple; CompressError naming the allowed ones."""
    values = (choices,) if isinstance(choices, int) else tuple(choices or ())
    if not values or any(isinstance(b, bool) or b not in TABLE_BITS for b in values):
        raise CompressError(f"table_bits {choices!r} must list widths out of "
                            f"{', '.join(map(str, TABLE_BITS))} (what exports store a table "
                            "in), e.g. [4, 8]")
    return tuple(sorted(set(values)))


def table_parameters(layout: DecoderLayout) -> list[nn.Parameter]:
    """The embedding table and, when it has its own tensor, the head's weight."""
    if not isinstance(layout.embeddings, nn.Embedding):
        raise CompressError("table_bits needs token embeddings (nn.Embedding) to quantize")
    params = [layout.embeddings.weight]
    head = layout.head
    if isinstance(head, nn.Linear) and head.weight is not layout.embeddings.weight:
        params.append(head.weight)
    return params


def quantize_table(weight: torch.Tensor, bits: int) -> AffineQuantized:
    """The export's quantizer (toolkit export --embedding-bits), one row block at a time
    (groups never cross rows, so the blocks give the whole table's codes)."""
    parts = [rtn_quantize(rows.float(), bits, TABLE_GROUP, symmetric=False)
             for rows in weight.detach().split(8192)]
    zeros = None if parts[0].zeros is None else torch.cat([p.zeros for p in parts])
    return AffineQuantized(codes=torch.cat([p.codes for p in parts]),
                           scales=torch.cat([p.scales for p in parts]), zeros=zeros,
                           bits=bits, group_size=TABLE_GROUP)


def table_choices(layout: DecoderLayout, kl: OutputKL, choices: tuple[int, ...]
                  ) -> LayerChoices:
    """The table's allocation entry: KL and stored bits per weight at every choice."""
    params = table_parameters(layout)
    numel = sum(p.numel() for p in params)
    options = {}
    for bits in choices:
        packed = [quantize_table(p, bits) for p in params]
        replacements = {id(p): (p, q.dequantize()) for p, q in zip(params, packed,
                                                                  strict=True)}
        stored = 8 * sum(q.storage_bytes() for q in packed) / numel
        options[bits] = (kl.kl_with_tensors(replacements), stored)
    return TABLE_ENTRY, numel, options


def apply_table_bits(layout: DecoderLayout, bits: int) -> int:
    """Put the table (and an untied head) on its `bits` grid in place; returns the
    weights changed."""
    params = table_parameters(layout)
    with torch.no_grad():
        for param in params:
            param.copy_(quantize_table(param, bits).dequantize().to(param.dtype))
    return sum(p.numel() for p in params)
