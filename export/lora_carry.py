"""Whether an export carries an artifact's LoRA recovery adapters (models/qformat/lora.py),
and keeping verification honest when it does not.

    ONNX (in memory or      carried: MatMul x A^T, MatMul . B^T, Mul s, Add, beside each
    streamed)               linear's MatMulNBits / palette lookup / float MatMul of a
                            pruned-only linear (export.onnx.decoder_graph)
    Core ML (one package    carried: the same branch in the traced decoder
    or chunks), LiteRT      (export.llm.decoder.ExportLinear; beside an int4 blockwise FC
    (one file or chunks)    export.litert.blockwise.BlockwiseLinear): float16 in Core ML
                            like the program's activations, float32 FULLY_CONNECTEDs in
                            LiteRT (float inputs: the int8 quantization is the int4 FC's)
    other targets           dropped: the writer has no side branch; the adapters are
                            detached while the file is written AND verified, so the file is
                            compared with the model it really holds (the compressed model
                            without adapters), and the report says so

A target that carries them sets `Exporter.carries_lora = True`, and `streams_lora = True`
when its streaming writer (a lazily read checkpoint) does too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from export.llm.streamed import StreamedArtifact
from models.qformat.lora import LORA_FILE, adapters_of, attach_adapter, detach_adapters


@dataclasses.dataclass
class LoraPlan:
    linears: int  # linears with an adapter in the artifact (0: nothing to decide)
    carried: bool
    why: str | None = None  # the reason they are dropped


def lora_plan(exporter: Any, artifact: Any) -> LoraPlan:
    if isinstance(artifact, StreamedArtifact):
        # The streamed writers (ONNX, Core ML and LiteRT chunks) and their reference read
        # the adapter file themselves (export.llm.lazy_weights, .streamed_reference).
        path = artifact.lazy.path
        count = _adapters_in_file(path / LORA_FILE) if path.is_dir() else 0
        if artifact.family == "llm" and getattr(exporter, "streams_lora", False):
            return LoraPlan(count, True)
        return LoraPlan(count, False, f"the streamed {exporter.target} writer has no LoRA "
                        "side branch yet (onnx, coreml and tflite carry them)")
    module = getattr(artifact, "module", None)
    count = len(adapters_of(module)) if module is not None else 0
    if getattr(exporter, "carries_lora", False):
        return LoraPlan(count, True)
    return LoraPlan(count, False, f"the {exporter.target} writer has no LoRA side branch "
                    "yet (onnx, coreml and tflite carry them)")


def _adapters_in_file(path) -> int:
    """How many linears the adapter file at `path` adapts (0 when there is none); the
    file is checked again, tensor by tensor, when a reader attaches it."""
    if not path.is_file():
        return 0
    from safetensors import safe_open

    from models.qformat.lora import SUFFIX_A

    try:
        with safe_open(str(path), framework="pt") as handle:
            return sum(1 for key in handle.keys() if key.endswith(SUFFIX_A))
    except Exception:  # unreadable: counted, so the checked read refuses it in one line
        return 1


@contextlib.contextmanager
def model_as_written(plan: LoraPlan, artifact: Any) -> Iterator[None]:
    """The artifact's module without its adapters while the file (which drops them) is
    written and verified; the adapters are put back afterwards, whatever happens."""
    module = getattr(artifact, "module", None)
    if plan.carried or module is None or not plan.linears:
        yield
        return
    adapters = adapters_of(module)
    modules = dict(module.named_modules())
    detach_adapters(module)
    try:
        yield
    finally:
        for name, adapter in adapters.items():
            attach_adapter(modules[name], adapter)


def note_lora(plan: LoraPlan, report: Any) -> None:
    """Record the adapters in the report: carried by a traced writer (one row for them
    all, where the writer keeps no per-layer record of its own, as ONNX's does), or
    dropped: a dropped row, a lost stage (the verdict says "carried none of"), and what
    the verification compared with."""
    if not plan.linears:
        return
    if plan.carried:
        if not any("lora" in how for how in report.carried):
            report.carried["lora adapters (float side branch)"] = plan.linears
        return
    report.dropped.append({"layer": "lora adapters", "why": plan.why})
    report.lost.append("LoRA adapters (verified against the model without them)")
    report.details["verified_against"] = "the compressed model without its LoRA adapters"
