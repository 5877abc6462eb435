"""The two key/value cache layouts an exported LLM's ONNX file can have, and the contract
each file records in its metadata (`edge_toolkit.llm`, read by export.onnx.llm_session,
the bench and the bundle writer).

stacked (the traced mixture-of-experts exporter, and `--onnx-attention standard`):

    inputs:  input_ids [1, T] int64, position [1] int64,
             past_keys, past_values [layers, kv_heads, max_context, head_dim] float32
    outputs: logits [1, T, vocab], present_keys, present_values (same shape as past)

per_layer (com.microsoft GroupQueryAttention, the default for dense decoders):

    inputs:  input_ids [1, T] int64, position [1] int64,
             past_key.{i}, past_value.{i} [1, kv_heads, max_context, head_dim]  (i < layers)
    outputs: logits [1, T, vocab], present_key.{i}, present_value.{i} (same shape)

Both are static buffers of max_context rows: a call writes rows position .. position+T-1
and attends to rows 0 .. position+T-1. A per-layer file can update its cache in place:
binding present_key.{i} to the very buffer given as past_key.{i} (onnxruntime's
IOBinding) makes GroupQueryAttention write only the new rows, with no copy of the cache
per token. A caller that feeds present back as past (plain `session.run`) gets the same
numbers, paying a copy per layer. The cache dtype is float32 or, with
`--kv-cache float16`, float16 (half the cache traffic), or with `--kv-cache int8`, int8
codes with static per-channel scales inside the file (a quarter; export.llm.kv_scales).
A caller starts from an all-zero cache of the recorded dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # runtime readers (the bundle reader) import this without torch
    from export.llm.decoder import DecoderShape

LLM_METADATA_KEY = "edge_toolkit.llm"  # the metadata entry holding io_description's JSON
STACKED, PER_LAYER = "stacked", "per_layer"
STACKED_INPUTS = ["input_ids", "position", "past_keys", "past_values"]
STACKED_OUTPUTS = ["logits", "present_keys", "present_values"]
KV_CACHE_DTYPES = ("float32", "float16", "int8")


def per_layer_names(layers: int) -> dict[str, list[str]]:
    """{"past_keys": ["past_key.0", ...], "past_values", "present_keys", "present_values"}."""
    return {f"{side}_{kind}s": [f"{side}_{kind}.{i}" for i in range(layers)]
            for side in ("past", "present") for kind in ("key", "value")}


def io_description(shape: DecoderShape, layout: str = STACKED,
                   cache_dtype: str = "float32") -> dict:
    """The file's contract as stored in its metadata."""
    description = {"cache_layout": layout, "cache_shape": list(shape.cache_shape()),
                   "cache_dtype": cache_dtype, "max_context": shape.max_context,
                   "vocab": shape.vocab}
    if layout == STACKED:
        return {"inputs": STACKED_INPUTS, "outputs": STACKED_OUTPUTS, **description}
    names = per_layer_names(shape.layers)
    return {"inputs": ["input_ids", "position", *_interleave(names, "past")],
            "outputs": ["logits", *_interleave(names, "present")],
            "cache_names": names, "shared_buffer": True, **description}


def _interleave(names: dict[str, list[str]], side: str) -> list[str]:
    pairs = zip(names[f"{side}_keys"], names[f"{side}_values"], strict=True)
    return [name for pair in pairs for name in pair]
