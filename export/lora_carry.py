"""Whether an export carries an artifact's LoRA recovery adapters (models/qformat/lora.py),
and keeping verification honest when it does not.

    ONNX (in memory or      carried: MatMul x A^T, MatMul . B^T, Mul s, Add, beside each
    streamed)               linear's MatMulNBits / palette lookup / float MatMul of a
                            pruned-only linear (export.onnx.decoder_graph)
    other targets           dropped: the writer has no side branch; the adapters are
                            detached while the file is written AND verified, so the file is
                            compared with the model it really holds (the compressed model
                            without adapters), and the report says so

A target that carries them sets `Exporter.carries_lora = True`.
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
        # The streamed ONNX writer and its reference read the adapter file themselves
        # (export.llm.lazy_weights, export.llm.streamed_reference); no other target does.
        path = artifact.lazy.path
        count = int(path.is_dir() and (path / LORA_FILE).is_file())
        if artifact.family == "llm" and getattr(exporter, "carries_lora", False):
            return LoraPlan(count, True)
        return LoraPlan(count, False, f"the streamed {exporter.target} writer has no LoRA "
                        "side branch yet (onnx carries them)")
    module = getattr(artifact, "module", None)
    count = len(adapters_of(module)) if module is not None else 0
    if getattr(exporter, "carries_lora", False):
        return LoraPlan(count, True)
    return LoraPlan(count, False, f"the {exporter.target} writer has no LoRA side branch "
                    "yet (onnx carries them)")


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
    """Record dropped adapters in the report: a dropped row, a lost stage (the verdict
    says "carried none of"), and what the verification compared with."""
    if not plan.linears or plan.carried:
        return
    report.dropped.append({"layer": "lora adapters", "why": plan.why})
    report.lost.append("LoRA adapters (verified against the model without them)")
    report.details["verified_against"] = "the compressed model without its LoRA adapters"
