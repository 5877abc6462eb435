"""The manifest keys of a bundle holding a chunked LiteRT LLM (export.litert.chunked):
model_chunk1.tflite .. model_chunkN.tflite, run in that order.

    model        {"file": the first chunk, "files": every chunk, "external_data": [],
                  "chunks": the chunk files in run order}
    chunks       per chunk: {"file", "layers" [first, last], "signatures": {"prefill",
                  "decode"}}, each tensor by role as in bundle_io, except that a chunk
                  after the first takes "hidden" [1, T, H] float32 instead of input_ids
                  and one before the last gives "hidden_out" instead of logits; its cache
                  tensors hold its own layers
    signatures, inputs, outputs, cache, prefill, max_context, vocab_size
                 the chain seen as one decoder: the first chunk's input_ids and position,
                 the last chunk's logits, the cache of all layers (chunk k reads and
                 returns its rows first..last), so the contract check and an app that
                 keeps one cache array apply unchanged

export.bundle_read_chunks runs them from the manifest alone.
"""

from __future__ import annotations

import copy
from pathlib import Path

from export.bundle_io import DECODE, PREFILL, _tflite_entries, check_contract, contract_summary


def chunk_entries(staging: Path, chunks: list[dict]) -> list[dict]:
    """Each chunk's {"file", "layers", "signatures"}, roles renamed for its place."""
    described = []
    for index, chunk in enumerate(chunks):
        entries = _tflite_entries(staging / chunk["file"])
        for entry in entries.values():
            if index > 0:
                entry["inputs"][0]["role"] = "hidden"
            if index < len(chunks) - 1:
                entry["outputs"][0]["role"] = "hidden_out"
        described.append({"file": chunk["file"], "layers": chunk["layers"],
                          "signatures": entries})
    return described


def chained_contract(described: list[dict]) -> dict[str, dict]:
    """The chain as one decoder's entry points (module docstring), contract-checked."""
    layers = sum(d["layers"][1] - d["layers"][0] + 1 for d in described)
    entries = {}
    for name in (PREFILL, DECODE):
        first = copy.deepcopy(described[0]["signatures"][name])
        last = described[-1]["signatures"][name]
        inputs = first["inputs"]
        outputs = [copy.deepcopy(last["outputs"][0]), *first["outputs"][1:]]
        for tensor in inputs[2:] + outputs[1:]:
            tensor["shape"] = [layers, *tensor["shape"][1:]]
            tensor["name"] = f"chunk k's {tensor['name']}"
        entries[name] = {"inputs": inputs, "outputs": outputs}
        check_contract(entries[name], f"the chunks' {name} chain")
    return entries


def chunked_manifest_keys(staging: Path, chunks: list[dict]) -> dict:
    described = chunk_entries(staging, chunks)
    entries = chained_contract(described)
    files = [c["file"] for c in chunks]
    return {"model": {"file": files[0], "files": files, "external_data": [],
                      "chunks": files},
            "chunks": described, **contract_summary(entries)}
