"""`export_llm_onnx`: an LLM as one ONNX graph with an explicit key/value cache.

    inputs:  input_ids [1, T] int64, position [1] int64,
             past_keys, past_values [layers, kv_heads, max_context, head_dim] float32
    outputs: logits [1, T, vocab], present_keys, present_values (same shape as past)

T is dynamic (1 .. max_context): prefill passes the prompt, decode one token, feeding the
present caches back as the next call's past (see export.llm.decoder). ONNX has one entry
point per file, so prefill and decode share the graph.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch

from export.errors import ExportError, require
from export.llm.decoder_weights import DecoderWeights
from export.llm.export_decoder import ExportDecoder
from export.onnx.cache_io import (
    LLM_METADATA_KEY,
    STACKED_INPUTS,
    STACKED_OUTPUTS,
    io_description,
)
from export.onnx.rewrite import carry_compression
from export.onnx.weights import set_accuracy_level
from export.records import LayerRecord

INPUT_NAMES = STACKED_INPUTS  # the traced exporter writes the stacked cache layout
OUTPUT_NAMES = STACKED_OUTPUTS
OPSET = 21  # UINT4 initializers (palettized indices) need opset 21
# Protobuf caps one message at 2 GB: bigger models keep their weights in PATH.data.
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclasses.dataclass
class OnnxExport:
    path: Path
    decoder: ExportDecoder | DecoderWeights  # what was written; both have .shape
    carried: list[LayerRecord]
    dropped: list[LayerRecord]
    external_data: bool


def export_llm_onnx(source: torch.nn.Module, out: Path, *, max_context: int,
                    quantized: dict | None = None,
                    metadata: dict[str, str] | None = None,
                    accuracy_level: int | None = None) -> OnnxExport:
    """Write `source` (a Hugging Face Llama-family causal LM) to `out` with the packed
    weights of `quantized` (source layer name -> models.qformat weight) carried in."""
    onnx = require("onnx", "onnx", "ONNX export")
    require("onnxscript", "onnx", "ONNX export")
    decoder = ExportDecoder.from_hf(source, max_context)
    model = _torch_export(decoder)
    by_initializer = {f"{export_name}.weight_t": (name, quantized[name])
                      for export_name, name in decoder.source_names.items()
                      if quantized and name in quantized}
    carried, dropped = carry_compression(model, by_initializer)
    set_accuracy_level(model.graph.node, accuracy_level)
    for key, value in {LLM_METADATA_KEY: json.dumps(io_description(decoder.shape)),
                       **(metadata or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    external = model.ByteSize() > EXTERNAL_DATA_BYTES
    out.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, os.fspath(out), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=out.name + ".data")
    else:
        onnx.save_model(model, os.fspath(out))
    return OnnxExport(out, decoder, carried, dropped, external)


def _torch_export(decoder: ExportDecoder):
    shape = decoder.shape
    keys, values = decoder.empty_cache()
    example = (torch.zeros(1, min(8, shape.max_context), dtype=torch.long),
               torch.zeros(1, dtype=torch.long), keys, values)
    tokens = torch.export.Dim("tokens", min=1, max=shape.max_context)
    dynamic = {"input_ids": {1: tokens}, "position": None, "keys": None, "values": None}
    try:
        # torch's exporter warns about its own internals (pytree deprecations); nothing
        # there concerns the user.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(decoder, example, dynamo=True, external_data=False,
                                        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                        dynamic_shapes=dynamic, opset_version=OPSET,
                                        optimize=True, verbose=False)
    except Exception as exc:  # torch.onnx wraps the failing op's name in its message
        raise ExportError(f"torch.onnx could not export the decoder: "
                          f"{str(exc).splitlines()[0][:300]}") from exc
    return program.model_proto
