"""What can be checked of a chunked Core ML LLM off macOS (where it cannot run), chunk by
chunk (one package open at a time): the inputs, outputs and states its place in the chain
calls for, one compile-time op per carried layer, and that every compressed weight
decompresses (coremltools' reference implementation) to the weight the toolkit evaluated,
bit for bit in fp16. The evaluated weights are read again from the DecoderWeights, one
tensor at a time; an AWQ layer is compared in the form the file holds, dequant(codes) =
W * s, whose 1/s multiplies the layer's input."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from export.coreml.chunked import ChunkedCoremlExport, ChunkFile
from export.coreml.inspect import decompressed_weights, describe_mlpackage
from export.coreml.llm import _digest
from export.coreml.verify_llm import NOT_RUN


def expected_io(chunk_file: ChunkFile, hidden: int, max_context: int) -> tuple[dict, dict]:
    chunk = chunk_file.chunk
    tokens = [1, max_context]
    inputs = ({"input_ids": [[1, 1], tokens]} if chunk.first
              else {"hidden": [[1, 1], tokens, [hidden, hidden]]})
    inputs["position"] = [1]
    return inputs, {"logits" if chunk.last else "hidden_out"}


def verify_chunked_coreml(result: ChunkedCoremlExport) -> dict:
    shape = result.decoder.shape
    checks, ops = [], Counter()
    for chunk_file in result.chunks:
        described = describe_mlpackage(chunk_file.path)
        ops.update(described["ops"])
        inputs, outputs = expected_io(chunk_file, shape.hidden, shape.max_context)
        cache = list(chunk_file.cache_shape)
        states = {"keys": cache, "values": cache}
        chunk = chunk_file.chunk
        label = f"chunk {chunk.index + 1} of {chunk.count}"
        io_ok = (described["inputs"] == inputs and set(described["outputs"]) == outputs
                 and described["states"] == states)
        checks.append((f"{label} io", io_ok,
                       f"{chunk_file.path.name}, {chunk_file.file_bytes / 1e6:.2f} MB, layers "
                       f"{chunk.start}..{chunk.stop - 1}: {', '.join(described['inputs'])} -> "
                       f"{', '.join(described['outputs'])}; states keys, values {cache}"))
        expected = Counter(r.carried_as.split(" ")[0] for r in chunk_file.carried)
        found = {op: described["ops"].get(op, 0) for op in expected}
        checks.append((f"{label} ops", found == dict(expected),
                       ", ".join(f"{found[op]} {op} for {n} layers"
                                 for op, n in expected.items()) or "no compressed layers"))
        checks.append(_weights_check(result, chunk_file, label))
    return {"runtime": "coremltools (files opened, not run)", "numerics": NOT_RUN,
            "ops": dict(ops), "chunks": [c.describe() for c in result.chunks],
            "checks": [{"check": name, "passed": bool(ok), "detail": detail}
                       for name, ok, detail in checks],
            "passed": all(ok for _, ok, _ in checks)}


def file_weight(weights, name: str) -> np.ndarray:
    """The weight record `name` should decompress to, as the file holds it."""
    tables = {weights.module_name(weights.layout.embeddings): weights.embedding_packed,
              weights.head_module: weights.embedding_packed if weights.tied
              else weights.head_packed}
    packed = tables.get(name)
    if packed is None:
        linear = weights.linear(name)
        packed = linear.packed
        if packed is None:
            return linear.weight.numpy()
    if getattr(packed, "input_scale", None) is not None:  # AWQ: the file holds W * s
        packed = dataclasses.replace(packed, input_scale=None)
    return packed.dequantize().numpy()


def _weights_check(result: ChunkedCoremlExport, chunk_file: ChunkFile, label: str):
    stored = Counter((w.shape, _digest(w))
                     for w in decompressed_weights(chunk_file.path).values())
    unmatched = []
    for record in chunk_file.carried:
        dense = file_weight(result.decoder, record.name)
        if stored[(dense.shape, _digest(dense))] == 0:
            unmatched.append(record.name)
    carried = len(chunk_file.carried)
    detail = (f"{carried - len(unmatched)} of {carried} decompress to the evaluated weights "
              "(fp16)")
    if unmatched:
        detail += f"; not: {unmatched[0]}"
    return (f"{label} weights", not unmatched, detail)
