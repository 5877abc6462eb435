"""The knobs of LoRA accuracy recovery (`{method: lora, rank: 16, ...}` in a recipe,
`toolkit compress ... --recover lora`).

After quantization or pruning, every compressed linear gets a rank-r adapter (LoRA, arXiv
2106.09685) that trains while the compressed weights stay frozen:

    y = W_q x + s B (A x),   s = alpha / r,   A ~ small random, B = 0  (start = W_q x)

and only A, B learn, by distillation from the uncompressed model on next-token
distributions (Hinton et al., arXiv 1503.02531):

    loss = T^2 KL(softmax(z_dense / T) || softmax(z_lora / T)),  averaged over tokens

W_q is the packed weight of a quantized linear, or the dense masked weight of one that was
only pruned (Wanda, SparseGPT, magnitude, N:M): its zeros stay zeros, the adapter is a side
branch and is never merged into it.

Under the streaming engine the stage is block-wise (compress/recovery/lora_block.py): each
block's adapters reproduce the dense block's output instead, so only one block is held.

Apple's on-device model recovers its 2/4-bit palettized weights (3.7 bits per weight)
this way, with rank-16 adapters (arXiv 2407.21075, section 5). The adapters are stored
in fp16 beside the compressed weights and counted in bits per weight separately.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from compress.config import MethodConfig
from compress.errors import CompressError


@dataclasses.dataclass
class LoraConfig(MethodConfig):
    """Every knob of LoRA recovery; `__post_init__` rejects values that cannot train."""

    method: ClassVar[str] = "lora"
    # Like distillation, not a method on its own: it needs a teacher and linears that an
    # earlier quantization or pruning stage compressed, which the job checks before any work
    # (toolkit/pipeline.py); None keeps it out of the standalone methods
    # (compress/requirements.py). It reaches the linears through the decoder layout.
    adapter: ClassVar[str | None] = None

    # Adapter rank r. 16 is Apple's choice for its 3.7-bit model: 16 r (in + out) / (in out)
    # bits per weight, 0.74 at SmolLM2-135M's narrow widths (576/1536, k/v 192), about
    # 0.2 at 3B widths.
    rank: int = 16
    # s = alpha / rank scales the adapter's output (arXiv 2106.09685, section 4.1), so the
    # learning rate need not change with the rank. None = alpha equal to the rank (s = 1).
    alpha: float | None = None
    # AdamW steps; each sees `batch_size` windows of `seq_len` tokens.
    steps: int = 200
    # AdamW learning rate of A and B. Higher than full fine-tuning's (LoRA's own runs use
    # 1e-4..1e-3): B starts at zero, so early steps must move it far enough to matter.
    lr: float = 1e-3
    # Windows per optimizer step; gradients are accumulated `micro_batch` rows at a time,
    # so memory holds one micro-batch's logits (teacher's and student's) at once.
    batch_size: int = 8
    micro_batch: int = 2
    # Tokens per training window. Shorter than calibration's 512: recovery needs many
    # distinct contexts more than long ones, and cost grows with the window.
    seq_len: int = 256
    # Training windows drawn from the calibration text pool (the calibration windows are
    # not enough for hundreds of steps without repeating); None = the calibration windows.
    samples: int | None = 512
    # Held-out windows (drawn apart from training) on which KL before and after is measured.
    eval_samples: int = 8
    # Softmax temperature T of the KD term; 1 = the plain KL the model is judged by.
    temperature: float = 1.0
    # Regexes over linear names that get adapters; empty = every compressed linear.
    targets: tuple[str, ...] = ()
    # Adam steps per block under the streaming engine (block-wise LoRA,
    # compress/recovery/lora_block.py), one calibration micro-batch (4 windows) each: 32 is
    # four passes over the default 32 x 512 calibration tokens. A step is one forward and
    # backward of one block on 2048 tokens, so the cost is blocks x steps of that
    # (BENCHMARKS.md, lora-blockwise: the whole SmolLM2-135M job, its two evaluations
    # included, took 702 s on 2 cores; a 3B block holds ~30x a SmolLM2 block's weights).
    block_steps: int = 32
    # Clip the global gradient norm (None = off): the first steps can spike.
    max_grad_norm: float | None = 1.0
    # Seeds A's initialisation and the order of the training windows.
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("rank", 1), ("steps", 1), ("block_steps", 1), ("batch_size", 1),
                              ("micro_batch", 1), ("seq_len", 2), ("eval_samples", 1)):
            _integer(name, getattr(self, name), minimum)
        if self.samples is not None:
            _integer("samples", self.samples, 1)
        _integer("seed", self.seed, None)
        if self.alpha is not None:
            _positive("alpha", self.alpha)
        _positive("lr", self.lr)
        _positive("temperature", self.temperature)
        if self.max_grad_norm is not None:
            _positive("max_grad_norm", self.max_grad_norm)
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        for regex in self.targets:
            try:
                re.compile(regex)
            except (re.error, TypeError) as exc:
                raise CompressError(f"lora targets entry {regex!r} is not a valid regex "
                                    f"({exc}): e.g. 'mlp' or 'q_proj|v_proj'") from None

    @property
    def scale(self) -> float:
        """s = alpha / r."""
        return (float(self.rank) if self.alpha is None else float(self.alpha)) / self.rank


def _integer(name: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (
            minimum is not None and value < minimum):
        need = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise CompressError(f"lora {name} {value!r} must be {need}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise CompressError(f"lora {name} {value!r} must be a number > 0")
