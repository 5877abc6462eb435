"""`export_llm_litert`: an LLM as a .tflite file with two signatures over one set of weights.

    prefill(input_ids [1, P] int32, position [1] int32, keys, values) -> logits, keys, values
    decode (input_ids [1, 1] int32, position [1] int32, keys, values) -> logits, keys, values

keys/values: [layers, kv_heads, max_context, head_dim] float32 (export.llm.decoder). LiteRT
wants static shapes, so prefill takes exactly P tokens: longer prompts go in chunks, a
shorter last chunk is padded (export.llm.greedy). litert-torch writes float32 weights;
the artifact's integer codes are then put back as LiteRT weight-only int8/int4
(export.litert.weights). Palette weights have no LiteRT op: each is mapped to blockwise
affine codes of its width (export.litert.palette_map), with its loss in the report. With
`tables` (export.litert.tables, --embedding-bits) the embedding table and head are
carried quantized too; `reference` then holds every value the file computes with that
differs from the artifact's, for the verification reference to swap in.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from export.errors import ExportError, require
from export.litert.palette_map import describe, mapped_layers
from export.litert.weights import Carry, carry_weights
from export.llm.export_decoder import ExportDecoder
from export.llm.table_quant import QuantizedTables
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
    # Parameter name -> packed values the file holds instead of the artifact's (tables
    # quantized at export, mapped palettes): what the verification reference swaps in.
    reference: QuantizedTables = dataclasses.field(
        default_factory=lambda: QuantizedTables({}))
    # Palette layer -> relative Frobenius error of its mapped weight (palette_map).
    mapped: dict[str, float] = dataclasses.field(default_factory=dict)
    # Parameter name -> the palette's own packed form, for the comparison with the artifact.
    palettes: QuantizedTables = dataclasses.field(default_factory=lambda: QuantizedTables({}))

    @property
    def extra_details(self) -> dict:
        """Report fields beyond the common ones (export.llm_job.describe_llm)."""
        if not self.mapped:
            return {}
        return {"mapped_palettes": {name: round(loss, 6) for name, loss in self.mapped.items()}}


def export_llm_litert(source: torch.nn.Module, out: Path, *, max_context: int,
                      prefill_tokens: int, quantized: dict | None = None,
                      tables: tuple[QuantizedTables, dict[str, Carry]] | None = None,
                      mapped: dict | None = None) -> LitertExport:
    """`tables`: export.litert.tables.quantize_tables' (reference values, carries) for
    --embedding-bits; `mapped`: palette_map.mapped_layers(quantized) when the caller has
    computed it already (None: computed here, at the palettes' own width)."""
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
    mapped = mapped_layers(quantized) if mapped is None else mapped
    layers: dict[str, tuple | Carry] = {}
    for name, packed in (quantized or {}).items():
        weight = source.get_submodule(name).weight.detach().float().numpy()
        if name in mapped:
            palette, affine, _ = mapped[name]
            layers[name] = Carry(weight, affine, describe(palette))
        else:
            layers[name] = (weight, packed)
    swapped, carries = tables or (QuantizedTables({}), {})
    layers.update(carries)
    carried, dropped = carry_weights(out, layers)
    reference = {**swapped.by_name,
                 **{f"{name}.weight": affine for name, (_, affine, _) in mapped.items()}}
    palettes = {f"{name}.weight": palette for name, (palette, _, _) in mapped.items()}
    return LitertExport(out, decoder, prefill_tokens, carried, dropped,
                        QuantizedTables(reference),
                        {name: loss for name, (_, _, loss) in mapped.items()},
                        QuantizedTables(palettes))
