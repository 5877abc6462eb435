"""`rotate` in the streaming engine (compress/streaming.py): the same rotation as
compress/rotate/rotate.py, applied while the model passes through one block at a time.

The rotation is data-free and touches every tensor that reads or writes the residual
stream, so it is not a per-block stage like the others but a change of basis of the whole
stream, done where each part is in memory:

    before the block-0 capture   E <- E Q on the materialised table, so every captured
                                 activation stream starts rotated
    each block, first of all     fold its norms, rotate its readers / writers and value
                                 heads (rotate_block), before the dense targets and the
                                 later stages' statistics see it
    outside the blocks (written  E Q again, the final norm folded into the head, the head
    last)                        rotated; a tied head gets its own tensor and the config
                                 says untied

R1 and the R2s are drawn up front from the seed in the in-memory order (Rotation.draw),
and each tensor goes through the same float64 products in the same order as in
rotate_model, so a streamed rotate + quantization writes the in-memory engine's weights
(tests/compress/test_rotate_streaming.py). A resumed run re-draws the same matrices; its
saved activation streams are rotated already.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from compress.block_stages import BlockStage
from compress.errors import CompressError
from compress.rotate.rotate import (
    RotateConfig,
    RotateReport,
    Rotation,
    block_linears,
    check_ends,
    fold_norm,
    incoherence,
    norm_offset,
    rotate_block,
    rotate_input,
)
from models.adapter import ResidualBlock, residual_blocks
from models.errors import ModelError


class RotateStage(BlockStage):
    kind = "rotate"
    changes_stream = True  # compress/streaming.py calls the hooks below

    def __init__(self, config: RotateConfig, **kw) -> None:
        if config.learn_steps:
            # The learned rotation trains through the whole quantized model at once.
            raise CompressError("a learned rotation (learn_steps) needs the whole model in "
                                "memory: run it with --engine memory, or use learn_steps: 0 "
                                "under the streaming engine")
        super().__init__(config, **kw)
        self.decoder = None
        self.rotation: Rotation | None = None
        self.blocks: list[ResidualBlock] = []  # on the skeleton: head sizes only
        # per block: incoherence of each reader / writer before and after
        self._incoherence: dict[int, tuple[list[float], list[float]]] = {}
        self._head: tuple[float, float] | None = None
        self._tied = False

    @property
    def needs(self) -> frozenset[str]:
        return frozenset()

    def keep(self, name: str) -> bool:
        return False  # no per-linear work: every reader and writer is rotated in before_block

    # --- hooks of the streaming engine ---------------------------------------------------

    def prepare(self, decoder) -> None:
        """Check the layout and every norm (one line, before any block is read), then draw
        the rotation."""
        layout = decoder.layout
        try:
            self.blocks = residual_blocks(layout)
        except ModelError as exc:
            raise CompressError(f"rotate: {exc}") from None
        hidden = check_ends(decoder.model, layout.embeddings, layout.head, layout.norm)
        norms = [layout.norm] + [site.norm for b in self.blocks for site in (b.attention, b.mlp)]
        for norm in norms:
            with decoder.materialized(norm):
                norm_offset(norm)
        self.decoder = decoder
        self._tied = bool(getattr(decoder.config, "tie_word_embeddings", False))
        self.rotation = Rotation.draw(self.config, hidden, [b.head_dim for b in self.blocks])

    def before_capture(self, embeddings: nn.Embedding) -> None:
        """The materialised table the block-0 inputs are gathered from: E <- E Q."""
        _rotate_table(embeddings.weight, self.rotation.q)

    def before_block(self, index: int, block: nn.Module) -> None:
        """Rotate the materialised block `index` (its parameters are fresh tensors, so
        its residual layout is looked up again)."""
        from models.adapter import _residual_block

        residual = _residual_block(self.decoder.layout, index)
        linears = block_linears(residual)
        before = [incoherence(lin.weight) for lin in linears]
        rotate_block(residual, self.rotation.q, self.rotation.head(index))
        self._incoherence[index] = (before, [incoherence(lin.weight) for lin in linears])

    def rewrite_outside(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The embeddings, final norm and head as the rotated model stores them (`tensors`:
        the checkpoint's tensors outside the blocks, by stored name)."""
        decoder, layout, q = self.decoder, self.decoder.layout, self.rotation.q
        table_name = decoder.module_name(layout.embeddings) + ".weight"
        norm_name = decoder.module_name(layout.norm) + ".weight"
        head_name = decoder.module_name(layout.head) + ".weight"
        stored = tensors[table_name].dtype
        out = dict(tensors)
        table = nn.Parameter(tensors[table_name].to(decoder.compute_dtype), requires_grad=False)
        # the head as rotate_model sees it: its own tensor, or (tied) a copy of the table
        head = SimpleNamespace(weight=nn.Parameter(
            tensors[head_name if head_name in tensors else table_name]
            .to(decoder.compute_dtype).clone(), requires_grad=False), bias=None)
        before = incoherence(head.weight)
        with decoder.materialized(layout.norm):
            norm = layout.norm
            norm.weight.data = tensors[norm_name].to(norm.weight.dtype).clone()
            fold_norm(norm, [head])
            out[norm_name] = norm.weight.detach().to(tensors[norm_name].dtype).clone()
        rotate_input(head, q)
        _rotate_table(table, q)
        self._head = (before, incoherence(head.weight))
        out[table_name] = table.detach().to(stored)
        out[head_name] = head.weight.detach().to(tensors.get(head_name, table).dtype)
        return out

    def config_changes(self) -> dict[str, Any]:
        """What the written config.json must say differently (the head is its own tensor)."""
        return {"tie_word_embeddings": False} if self._tied else {}

    # --- the BlockStage contract -----------------------------------------------------------

    def process(self, index, all_linears, linears, stats) -> None:
        """Nothing: the block was rotated in before_block."""

    def block_record(self, index: int) -> dict[str, Any]:
        before, after = self._incoherence[index]
        return {"incoherence_before": before, "incoherence_after": after}

    def restore_block(self, index: int, record: dict[str, Any]) -> None:
        self._incoherence[index] = (record["incoherence_before"], record["incoherence_after"])

    def report(self) -> RotateReport:
        config: RotateConfig = self.config  # type: ignore[assignment]
        before = [v for i in sorted(self._incoherence) for v in self._incoherence[i][0]]
        after = [v for i in sorted(self._incoherence) for v in self._incoherence[i][1]]
        if self._head is not None:
            before.append(self._head[0])
            after.append(self._head[1])
        head_dims = {b.head_dim for b in self.blocks}
        rows, width = self.decoder.layout.embeddings.weight.shape
        head_bytes = rows * width * self.decoder.source.infos()[
            self.decoder.module_name(self.decoder.layout.embeddings) + ".weight"
        ].dtype.itemsize if self._tied else 0
        return RotateReport(
            config.kind, config.seed, width,
            (head_dims.pop() if len(head_dims) == 1 else None) if config.head_rotation
            else None, self._tied, head_bytes, len(before), _summary(before), _summary(after),
            self.forward_dtype, self.seconds)


def _rotate_table(weight: torch.Tensor, q: torch.Tensor) -> None:
    """W <- W Q for a [rows, hidden] table, in float64 as rotate_model does it."""
    with torch.no_grad():
        weight.copy_((weight.detach().double() @ q.to(weight.device)).to(weight.dtype))


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "max": max(values)} if values else {}
