"""Block recovery as a step of the streaming engine (compress/streaming.py): the engine
hands it each block after the earlier stages, the activations entering the block on its
own stream, and the dense block's outputs on the dense stream (the targets); it trains
the block with `recover_block` and gives the earlier quantization stage the updated
packed forms, so the shard the writer puts on disk holds the recovered scales."""

from __future__ import annotations

from typing import Any

from torch import nn

from compress.block_io import BlockInputs
from compress.block_stages import BlockStage
from compress.recovery.block_recovery import recover_block
from compress.recovery.config import RecoverConfig
from compress.recovery.stage import RecoverReport


class RecoveryStage(BlockStage):
    kind = "recover"
    wants_dense_targets = True  # the engine keeps a dense activation stream for it

    def __init__(self, config: RecoverConfig, previous: list[BlockStage], **kw) -> None:
        super().__init__(config, **kw)
        self.previous = list(previous)
        self._report = RecoverReport([], {}, self.seconds, self.calib_tokens)
        self._blocks: dict[int, dict[str, Any]] = {}

    @property
    def needs(self) -> frozenset[str]:
        return frozenset()  # no statistics: it learns from the block's outputs

    def keep(self, name: str) -> bool:
        return True

    def process_with_targets(self, index: int, prefix: str, block: nn.Module,
                             inputs: BlockInputs, targets: list) -> None:
        owners = {name: stage for stage in self.previous for name in stage.packed(index)}
        relative = {name[len(prefix) + 1:]: stage.packed(index)[name]
                    for name, stage in owners.items()}
        updated, report = recover_block(block, inputs, targets, relative, self.config)
        for stage in {id(s): s for s in owners.values()}.values():
            fresh = {name: updated[name[len(prefix) + 1:]] for name in stage.packed(index)}
            stage.set_packed(index, fresh)  # type: ignore[attr-defined]
        self._blocks[index] = report
        self._report.blocks.append(report)

    def block_record(self, index: int) -> dict[str, Any]:
        return self._blocks.pop(index)

    def restore_block(self, index: int, record: dict[str, Any]) -> None:
        self._report.blocks.append(record)

    def report(self) -> RecoverReport:
        return self._report
