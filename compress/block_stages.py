"""Recipe stages as per-block steps, for the streaming engine (compress/streaming.py).

The in-memory engines (compress/engine.py, compress/quant/engine.py) sweep the whole model
once per stage. The streaming engine holds one block at a time, so it applies every stage
to block i before it moves on; each stage is then a `BlockStage`: the statistics it needs,
which linears it keeps, and what it does to one block's linears, with the same pure
per-layer functions (`prune_weight`, `quantize_weight`) and the same per-linear wrappers
as the in-memory engines, so both produce the same weights bit for bit.

A stage also turns its per-block results into JSON (`block_record`) and back
(`restore_block`), so a resumed run rebuilds the report of the blocks finished before
the crash without holding their tensors.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn

from compress.config import MethodConfig
from compress.engine import PruneReport, _prune_linear
from compress.errors import CompressError
from compress.prune.base import PruneConfig
from compress.quant.base import QuantConfig
from compress.quant.engine import quantize_linear
from compress.quant.report import QuantReport
from compress.stats import LinearStats
from models.qformat import QuantizedWeight


@dataclasses.dataclass(frozen=True)
class PackedSummary:
    """What a report needs of a packed linear once its tensors are on disk: its layout
    entry, stored bytes and shape (`QuantReport.manifest_section` reads only these)."""

    layout: dict[str, Any]
    nbytes: int
    shape: tuple[int, int]

    def meta(self) -> dict[str, Any]:
        return dict(self.layout)

    def storage_bytes(self) -> int:
        return self.nbytes

    @classmethod
    def of(cls, packed: QuantizedWeight) -> PackedSummary:
        return cls(packed.meta(), packed.storage_bytes(), tuple(packed.shape))


class BlockStage:
    """One recipe stage applied block by block. Subclasses fill `process`."""

    kind = ""

    def __init__(self, config: MethodConfig, calib_tokens: int, forward_dtype: str,
                 seconds: dict[str, float]) -> None:
        self.config = config
        self.calib_tokens = calib_tokens
        self.forward_dtype = forward_dtype
        self.seconds = seconds

    @property
    def needs(self) -> frozenset[str]:
        return self.config.needs  # type: ignore[attr-defined]

    def keep(self, name: str) -> bool:
        return not self.config.is_ignored(name)  # type: ignore[attr-defined]

    # A stage that changes the residual stream's basis (rotate) sets this; the engine
    # then calls its prepare / before_capture / before_block hooks and the writer its
    # rewrite_outside / config_changes (compress/rotate/streaming_stage.py).
    changes_stream = False

    def process(self, index: int, all_linears: dict[str, nn.Linear],
                linears: dict[str, nn.Linear], stats: dict[str, LinearStats]) -> None:
        raise NotImplementedError

    def packed(self, index: int) -> dict[str, QuantizedWeight]:
        """Block `index`'s packed linears (full names), for the shard writer."""
        return {}

    def block_record(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def restore_block(self, index: int, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def report(self):
        raise NotImplementedError


class PruneStage(BlockStage):
    kind = "prune"

    def __init__(self, config: PruneConfig, n_blocks: int, **kw) -> None:
        super().__init__(config, **kw)
        if config.layerwise != "uniform":
            raise CompressError(f"--layerwise {config.layerwise} needs a dense pre-pass over "
                                "the whole model, which the streaming engine does not run: "
                                "use --layerwise uniform or --engine memory")
        self._report = PruneReport({}, {}, [config.sparsity] * n_blocks, None, [],
                                   self.calib_tokens, self.forward_dtype, self.seconds)
        self._blocks: dict[int, tuple[list[str], list[str]]] = {}  # (pruned, ignored)

    def process(self, index, all_linears, linears, stats) -> None:
        config: PruneConfig = self.config  # type: ignore[assignment]
        self._report.ignored += [n for n in all_linears if n not in linears]
        start = time.perf_counter()
        for name, linear in linears.items():
            _prune_linear(name, linear, stats[name], config.sparsity, config,
                          config.prune_weight, self._report)  # type: ignore[attr-defined]
            stats[name].hessian = None  # d_in^2 floats: free before the next linear
        self._report.block_method_seconds.append(time.perf_counter() - start)
        self._blocks[index] = (list(linears), [n for n in all_linears if n not in linears])

    def block_record(self, index: int) -> dict[str, Any]:
        names, ignored = self._blocks.pop(index)
        return {"sparsity": {n: self._report.layer_sparsity[n] for n in names},
                "numel": {n: self._report.layer_numel[n] for n in names},
                "ignored": ignored,
                "method_seconds": self._report.block_method_seconds[-1]}

    def restore_block(self, index: int, record: dict[str, Any]) -> None:
        self._report.layer_sparsity.update(record["sparsity"])
        self._report.layer_numel.update(record["numel"])
        self._report.ignored += record["ignored"]
        self._report.block_method_seconds.append(record["method_seconds"])

    def report(self) -> PruneReport:
        return self._report


class QuantStage(BlockStage):
    kind = "quantize"

    def __init__(self, config: QuantConfig, **kw) -> None:
        super().__init__(config, **kw)
        if getattr(config, "backend", "toolkit") != "toolkit":
            raise CompressError(f"backend {config.backend} quantizes the whole model at once "  # type: ignore[attr-defined]
                                "and cannot stream: use --backend toolkit or --engine memory")
        if getattr(config, "target_bits", None) is not None:
            raise CompressError("mixed bit-widths (target_bits) need a sensitivity pre-pass "
                                "over the whole model, which the streaming engine does not "
                                "run: give one --bits or use --engine memory")
        self._report = QuantReport(config.method, {}, [], self.calib_tokens,
                                   self.forward_dtype, self.seconds)
        self._fresh: dict[int, dict[str, QuantizedWeight]] = {}
        self._ignored: dict[int, list[str]] = {}

    def process(self, index, all_linears, linears, stats) -> None:
        self._ignored[index] = [n for n in all_linears if n not in linears]
        self._report.ignored += self._ignored[index]
        fresh = {}
        for name, linear in linears.items():
            fresh[name] = quantize_linear(name, linear, stats[name], self.config,
                                          self.config.quantize_weight)  # type: ignore[attr-defined]
            stats[name].hessian = None  # d_in^2 floats: free before the next linear
        self._fresh[index] = fresh

    def packed(self, index: int) -> dict[str, QuantizedWeight]:
        return self._fresh.get(index, {})

    def set_packed(self, index: int, packed: dict[str, QuantizedWeight]) -> None:
        """A later stage (block recovery) replaced the packed forms of block `index`."""
        self._fresh[index] = packed

    def block_record(self, index: int) -> dict[str, Any]:
        """Summaries only: the block's packed tensors are on disk by now, so they are
        dropped here to keep memory to one block."""
        fresh = self._fresh.pop(index, {})
        summaries = {n: PackedSummary.of(q) for n, q in fresh.items()}
        self._report.quantized.update(summaries)  # type: ignore[arg-type]
        return {"layers": {n: {"layout": s.layout, "bytes": s.nbytes, "shape": list(s.shape)}
                           for n, s in summaries.items()},
                "ignored": self._ignored.pop(index, [])}

    def restore_block(self, index: int, record: dict[str, Any]) -> None:
        for name, entry in record["layers"].items():
            self._report.quantized[name] = PackedSummary(  # type: ignore[assignment]
                entry["layout"], entry["bytes"], tuple(entry["shape"]))
        self._report.ignored += record["ignored"]

    def report(self) -> QuantReport:
        return self._report


def stage_for(config: MethodConfig, *, n_blocks: int, calib_tokens: int,
              forward_dtype: torch.dtype, seconds: dict[str, float],
              previous: list[BlockStage] | None = None) -> BlockStage:
    """The per-block form of a recipe stage (`previous`: the stages before it), or a
    one-line refusal for a method that needs the whole model at once."""
    common = {"calib_tokens": calib_tokens if getattr(config, "needs", True) else 0,
              "forward_dtype": str(forward_dtype).replace("torch.", ""), "seconds": seconds}
    if isinstance(config, PruneConfig):
        return PruneStage(config, n_blocks, **common)
    if isinstance(config, QuantConfig):
        return QuantStage(config, **common)
    from compress.recovery.config import RecoverConfig
    from compress.recovery.streaming_stage import RecoveryStage  # imports this module
    from compress.rotate.rotate import RotateConfig
    from compress.rotate.streaming_stage import RotateStage  # imports this module

    if isinstance(config, RotateConfig):
        common["calib_tokens"] = 0
        return RotateStage(config, **common)
    from compress.recovery.lora import LoraConfig
    from compress.recovery.lora_streaming import LoraBlockStage  # imports this module

    if isinstance(config, LoraConfig):
        common["calib_tokens"] = calib_tokens
        return LoraBlockStage(config, previous or [], **common)
    if isinstance(config, RecoverConfig):
        common["calib_tokens"] = calib_tokens
        return RecoveryStage(config, previous or [], **common)
    raise CompressError(f"method {config.method} works on the whole model at once and "
                        "cannot run block by block: use --engine memory on a model that "
                        "fits in memory, or a block-wise method")
