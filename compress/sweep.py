"""One block-sequential pass over a decoder: the loop every calibrated method shares.

    capture the inputs of block 0
    for each block i:
        collect the statistics the method needs (hooks on the block's linears)
        let the method process the block's linears (prune, quantize, or only measure)
        re-run the (possibly changed) block: its outputs are block i+1's inputs

so block i+1 is calibrated on what the already-compressed block i produces (SparseGPT,
arXiv 2301.00774; GPTQ, arXiv 2210.17323). Only one block's activations are in memory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import nn

from compress.block_io import capture_block0_inputs, collect_linear_inputs, run_block
from compress.errors import CompressError
from compress.stats import LinearStats
from models.adapter import DecoderLayout, decoder_layout

# (stage, done, total): e.g. ("prune", 3, 30). The CLI turns it into a progress bar.
Progress = Callable[[str, int, int], None]
# (block index, {linear name: module}, {linear name: stats}) -> None
ProcessBlock = Callable[[int, dict[str, nn.Linear], dict[str, LinearStats]], None]


@dataclasses.dataclass
class BlockSweep:
    """A model prepared for block-sequential passes, and the time each part took."""

    model: nn.Module
    calib: torch.Tensor | None
    device: torch.device
    forward_dtype: torch.dtype
    batch_size: int = 4
    progress: Progress | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    layout: DecoderLayout = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.layout = decoder_layout(self.model)
        for key in ("capture", "forward", "method"):
            self.seconds.setdefault(key, 0.0)

    @property
    def n_blocks(self) -> int:
        return len(self.layout.blocks)

    def run(self, stage: str, needs: frozenset[str], keep: Callable[[str], bool],
            process: ProcessBlock) -> None:
        """One pass: `process` sees each block's kept linears with `needs` statistics.

        Without `needs` no forward pass runs at all (data-free methods). A `keep` (the
        method's --ignore patterns) that leaves no linear in any block is refused before
        any forward pass: the run would only copy the model."""
        self._check_something_kept(keep)
        inputs = self._capture() if needs else None
        for index, block in enumerate(self.layout.blocks):
            linears = {n: m for n, m in self.layout.block_linears(index).items() if keep(n)}
            stats = {name: LinearStats.empty(lin.in_features, needs, self.device)
                     for name, lin in linears.items()}
            if needs and linears:
                with collect_linear_inputs(linears, stats):
                    self._forward(block, inputs, keep_outputs=False)
            start = time.perf_counter()
            process(index, linears, stats)
            self.seconds["method"] += time.perf_counter() - start
            if inputs is not None and index + 1 < self.n_blocks:
                inputs = self._forward(block, inputs, keep_outputs=True)
            if self.progress:
                self.progress(stage, index + 1, self.n_blocks)

    def _check_something_kept(self, keep: Callable[[str], bool]) -> None:
        names = [n for i in range(self.n_blocks) for n in self.layout.block_linears(i)]
        if names and not any(keep(n) for n in names):
            raise CompressError(f"--ignore leaves no linear to compress: it matches all "
                                f"{len(names)} linears of the decoder blocks (e.g. "
                                f"{names[0]}): narrow the patterns")

    def _capture(self):
        if self.calib is None or self.calib.ndim != 2 or self.calib.shape[0] == 0:
            raise ValueError("this method needs calibration token ids of shape [N, L]")
        start = time.perf_counter()
        inputs = capture_block0_inputs(self.model, self.layout.blocks[0], self.calib,
                                       self.batch_size, self.device)
        self.seconds["capture"] += time.perf_counter() - start
        return inputs

    def _forward(self, block, inputs, keep_outputs):
        start = time.perf_counter()
        out = run_block(block, inputs, self.forward_dtype, keep_outputs)
        self.seconds["forward"] += time.perf_counter() - start
        return out


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
