"""`--embedding-bits` for LiteRT: the embedding table and the LM head quantized at export
(export.llm.table_quant's per-row groups, with the quantizer the caller passes), handed to
export.litert.weights as weights to carry:

    tied      one set of codes: the head's FULLY_CONNECTED reads DEQUANTIZE(codes), the
              token lookup gathers the codes of its rows (export.litert.gather)
    untied    the table: row lookup over its codes only (never float in memory);
              the head: DEQUANTIZE(codes) like any carried linear, unless the artifact
              quantized the head itself (then its own codes are carried as they are)

The verification reference swaps the same dequantized values into the model
(QuantizedTables.swapped_into), so the check stays one of exactness.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from export.litert.weights import Carry
from export.llm.table_quant import QuantizedTables, quantize_rows
from models.adapter import decoder_layout

NOTE = "quantized at export"


def quantize_tables(module: torch.nn.Module, quantizer: Callable,
                    quantized: dict | None) -> tuple[QuantizedTables, dict[str, Carry]]:
    """(parameter name -> packed, for the reference; layer name -> Carry, for the file)."""
    layout = decoder_layout(module)
    names = {id(m): n for n, m in module.named_modules()}
    table_name, head_name = names[id(layout.embeddings)], names[id(layout.head)]
    table = layout.embeddings.weight.detach().float()
    tied = layout.head.weight is layout.embeddings.weight
    packed = quantize_rows([table.numpy()], quantizer)
    by_param = {f"{table_name}.weight": packed}
    carries = {table_name: Carry(table.numpy(), packed, NOTE,
                                 tied_head=f"{head_name} (tied)" if tied else None)}
    if not tied and head_name not in (quantized or {}):
        head = layout.head.weight.detach().float()
        head_packed = quantizer(head)
        by_param[f"{head_name}.weight"] = head_packed
        carries[head_name] = Carry(head.numpy(), head_packed, NOTE)
    return QuantizedTables(by_param), carries
