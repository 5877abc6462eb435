"""The knobs of block-wise recovery (`{method: recover, ...}` in a recipe).

Recovery runs after compression stages: each compressed decoder block learns to
reproduce the dense block's outputs on the calibration activations (block
reconstruction, BRECQ arXiv 2102.05426), training only what compression left free, so the
stored form keeps its meaning: quantization scales with codes and zero points fixed (PEQA
arXiv 2305.14152; OmniQuant arXiv 2308.13137 learns its quantization parameters block by
block with the same objective), the block's norm weights, and the surviving weights of
pruned linears with their zeros kept.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from compress.config import MethodConfig
from compress.errors import CompressError

# What `train` may name: norm weights of the block, quantization scales (affine scales or
# palette lookup tables), surviving weights of pruned linears that are not quantized.
TRAIN_PARTS = ("norms", "scales", "weights")
AUTO = "auto"


@dataclasses.dataclass
class RecoverConfig(MethodConfig):
    """Every knob of block-wise recovery; `__post_init__` rejects values that cannot train."""

    method: ClassVar[str] = "recover"
    # Reaches the model through its decoder blocks, one at a time, so memory is one block
    # plus its activations (the streaming engine calls the same per-block function).
    adapter: ClassVar[str | None] = "decoder_layout"

    # Adam steps per block. A block has few free parameters next to its calibration
    # activations, so a fixed, small budget suffices (BRECQ/OmniQuant use hundreds to a
    # few thousand on far more data; 100 keeps a 3B model's 36 blocks in minutes).
    steps: int = 100
    # Adam learning rate of norm weights and of pruned linears' surviving weights (an
    # absolute step: both start next to a good solution, so it is small).
    lr: float = 1e-4
    # Adam learning rate of the quantization scales, as a RELATIVE change: a scale is
    # trained as s0 * f with f starting at 1, so one rate fits layers whose scales differ
    # by orders of magnitude (OmniQuant's learnable clipping is a factor too).
    scale_lr: float = 1e-3
    # Calibration micro-batches (as the pipeline split them) per optimizer step; their
    # gradients are accumulated one at a time, so memory holds one micro-batch's graph.
    batch_size: int = 1
    # What trains: "auto" (= norms, scales and weights) or a list of those parts.
    train: str | tuple[str, ...] = AUTO
    # Seeds the order in which micro-batches are visited; two runs with one seed give the
    # same bytes.
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("steps", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise CompressError(f"{name} {value!r} must be an integer >= {minimum}, "
                                    f"e.g. {100 if name == 'steps' else 1}")
        for name in ("lr", "scale_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise CompressError(f"{name} {value!r} must be a number > 0, e.g. 1e-4")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CompressError(f"seed {self.seed!r} must be an integer")
        parts = (self.train,) if isinstance(self.train, str) else tuple(self.train)
        if parts != (AUTO,) and (not parts or not set(parts) <= set(TRAIN_PARTS)):
            raise CompressError(f"train {self.train!r} must be 'auto' or a list of "
                                f"{', '.join(TRAIN_PARTS)}")
        self.train = self.train if isinstance(self.train, str) else parts

    def parts(self) -> frozenset[str]:
        """The parts that train: all of them for "auto"."""
        if self.train == AUTO:
            return frozenset(TRAIN_PARTS)
        return frozenset((self.train,) if isinstance(self.train, str) else self.train)
