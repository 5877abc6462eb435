"""What can be checked of a Core ML LLM off macOS (where it cannot run): its inputs,
output and states, the compressed ops it should hold, and that every compressed weight
decompresses (with coremltools' reference implementation) to the weight the toolkit
evaluated, in fp16, bit for bit (AWQ layers: after undoing their scales, to fp16
rounding); an embedding table or head quantized at export (--embedding-bits) to its
dequantized values. Chunked exports: export.coreml.verify_chunks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from export.coreml.inspect import decompressed_weights, describe_mlpackage

NOT_RUN = "numerics not checked: Core ML runs only on macOS"
OP_OF_CARRIED = {"constexpr_lut_to_dense": "constexpr_lut_to_dense",
                 "constexpr_blockwise_shift_scale": "constexpr_blockwise_shift_scale",
                 "constexpr_sparse_to_dense": "constexpr_sparse_to_dense"}


def verify_coreml_llm(path: Path, result) -> dict:
    """`result`: the CoremlExport. Returns the checks, each (name, passed, detail)."""
    description = describe_mlpackage(path)
    cache = list(result.decoder.shape.cache_shape())
    checks = [
        ("inputs", set(description["inputs"]) == {"input_ids", "position"},
         ", ".join(description["inputs"])),
        ("output", list(description["outputs"]) == ["logits"],
         ", ".join(description["outputs"])),
        ("states", description["states"] == {"keys": cache, "values": cache},
         f"keys, values {cache}"),
    ]
    expected = Counter(record.carried_as.split(" ")[0] for record in result.carried)
    for op_type, count in expected.items():
        found = description["ops"].get(op_type, 0)
        checks.append((op_type, found == count, f"{found} ops for {count} layers"))
    checks.append(_weights_check(path, result))
    return {"runtime": "coremltools (file opened, not run)", "numerics": NOT_RUN,
            "ops": description["ops"], "checks": [
                {"check": name, "passed": bool(ok), "detail": detail}
                for name, ok, detail in checks],
            "passed": all(ok for _, ok, _ in checks)}


def _weights_check(path: Path, result) -> tuple[str, bool, str]:
    stored = [np.asarray(w, dtype=np.float16) for w in decompressed_weights(path).values()]
    unmatched = 0
    tables = getattr(result, "tables", {})
    for record in result.carried:
        if record.name in tables:  # quantized at export: the dequantized table or head
            dense = tables[record.name].dequantize().numpy().astype(np.float16)
        else:
            export_name = next(e for e, s in result.decoder.source_names.items()
                               if s == record.name)
            dense = (result.decoder.get_parameter(f"{export_name}.weight_t").detach().t()
                     .numpy().astype(np.float16))
        scale = result.input_scales.get(record.name)
        if scale is None:
            same = [w.shape == dense.shape and np.array_equal(w, dense) for w in stored]
        else:  # AWQ: the file holds W * s; undoing s rounds once more in fp16
            same = [w.shape == dense.shape and np.allclose(
                w.astype(np.float32) / scale.astype(np.float32), dense, rtol=2e-3, atol=1e-6)
                for w in stored]
        if not any(same):
            unmatched += 1
    carried = len(result.carried)
    return ("compressed weights", unmatched == 0,
            f"{carried - unmatched} of {carried} decompress to the evaluated weights (fp16)")
