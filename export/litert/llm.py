"""`export_llm_litert`: an LLM as a .tflite file with two signatures over one set of weights.

    prefill(input_ids [1, P] int32, position [1] int32, keys, values) -> logits, keys, values
    decode (input_ids [1, 1] int32, position [1] int32, keys, values) -> logits, keys, values

keys/values: [layers, kv_heads, max_context, head_dim] float32 (export.llm.decoder). LiteRT
wants static shapes, so prefill takes exactly P tokens: longer prompts go in chunks, a
shorter last chunk is padded (export.llm.greedy). litert-torch writes float32 weights;
the artifact's integer codes are then put back as LiteRT weight-only int8/int4
(export.litert.weights). Palette weights have no LiteRT op and stay float32, and the
report lists every such layer.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from export.errors import ExportError, require
from export.litert.weights import carry_weights
from export.llm.export_decoder import ExportDecoder
from export.quiet import captured_console
from export.records import LayerRecord

SIGNATURES = ("prefill", "decode")


@dataclasses.dataclass
class LitertExport:
    path: Path
    decoder: ExportDecoder
    prefill_tokens: int
    carried: list[LayerRecord]
    dropped: list[LayerRecord]


def export_llm_litert(source: torch.nn.Module, out: Path, *, max_context: int,
                      prefill_tokens: int, quantized: dict | None = None) -> LitertExport:
    litert_torch = require("litert_torch", "litert", "LiteRT export")
    decoder = ExportDecoder.from_hf(source, max_context)
    if not 1 <= prefill_tokens <= max_context:
        raise ExportError(f"prefill length {prefill_tokens} must lie in 1..{max_context} "
                          "(the max context)")
    keys, values = decoder.empty_cache()
    position = torch.zeros(1, dtype=torch.long)
    prefill = (torch.zeros(1, prefill_tokens, dtype=torch.long), position, keys, values)
    decode = (torch.zeros(1, 1, dtype=torch.long), position, keys, values)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # litert-torch logs every conversion phase to the console; the command prints
        # its own summary, so keep those lines out of the way.
        with torch.no_grad(), warnings.catch_warnings(), captured_console():
            warnings.simplefilter("ignore", FutureWarning)
            edge = (litert_torch.signature("prefill", decoder, prefill)
                    .signature("decode", decoder, decode).convert())
            edge.export(str(out))
    except Exception as exc:
        raise ExportError(f"litert-torch could not convert the decoder: "
                          f"{str(exc).splitlines()[0][:300]}") from exc
    layers = {name: (source.get_submodule(name).weight.detach().float().numpy(), packed)
              for name, packed in (quantized or {}).items()}
    carried, dropped = carry_weights(out, layers)
    return LitertExport(out, decoder, prefill_tokens, carried, dropped)
