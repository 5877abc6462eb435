"""The knobs of mixed bit-width allocation, shared by the quantizers that mix widths
(palettize, rtn, gptq), and their one-line validation.

A quantizer's config inherits `MixedBitsConfig` beside its own base and supplies what
the pre-pass and the checks need of its format (`compress.quant.mixed_plan` runs them):

    mixable_bits                   the widths its stored form can hold
    choice_cost(bits)              stored bits per weight at that width when the config
                                   alone fixes it (an integer grid: the code plus an fp16
                                   scale and a zero point per group), else None (palette
                                   tables depend on each layer's shape: the allocator
                                   checks those after the pre-pass)
    trial(weight, hessian, bits)   the layer quantized at `bits` as the sensitivity
                                   pre-pass judges it
    trial_is_final                 whether the main pass would store exactly that (a
                                   data-free quantizer), so the pre-pass's result is kept
    trial_needs                    the calibration statistics `trial` reads
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from compress.errors import CompressError
from compress.quant.sensitivity import check_sensitivity
from compress.stats import HESSIAN
from models.qformat import QuantizedWeight

# benchmarks/mixed_bits_sensitivity.py, SmolLM2-135M palettized at 3.7 bits of 2/4:
# measured 31.1, relative 43.8, absolute 78.4 Wikipedia perplexity (uniform 4-bit 22.7).
DEFAULT_SENSITIVITY = "measured"


@dataclasses.dataclass
class MixedBitsConfig:
    """Mixed bit-width knobs; a quantizer config inherits them (see the module docstring)."""

    # Mixed bit-width: average stored bits per weight over the quantized linears, scales,
    # zero points and tables included (e.g. 3.7). Layers whose outputs suffer most get
    # the larger choices. Needs calibration data. None = every layer gets `bits`.
    target_bits: float | None = None
    # The bit-widths mixed under target_bits (Apple mixes 2- and 4-bit palettes).
    bits_choices: tuple[int, ...] = (2, 4)
    # How target_bits judges a layer at each choice (compress.quant.sensitivity):
    # "absolute" output error tr(dW H dW^T)/n, "relative" = that / tr(W H W^T), or
    # "measured" = KL of the next-token distributions with only that layer quantized.
    # The default is the one that gave the lowest perplexity in
    # benchmarks/mixed_bits_sensitivity.py (BENCHMARKS.md).
    sensitivity: str = DEFAULT_SENSITIVITY
    # "measured" runs the model on this many calibration windows of this many tokens,
    # once per layer and choice but the largest: its cost grows with both.
    sensitivity_windows: int = 4
    sensitivity_tokens: int = 256
    # The embedding table and LM head join the mixed-bit budget at one of these widths
    # (round-to-nearest in groups of 32, what `toolkit export --embedding-bits` stores;
    # compress.quant.table_bits), judged by measured KL like the layers. target_bits then
    # averages over the linears and the table. None keeps the table float, outside it.
    table_bits: tuple[int, ...] | None = None

    mixable_bits: ClassVar[tuple[int, ...]] = ()

    def choice_cost(self, bits: int) -> tuple[float, str] | None:
        """(stored bits per weight at `bits`, what it holds) when the config fixes it."""
        return None

    def trial(self, weight: torch.Tensor, hessian: torch.Tensor | None,
              bits: int) -> QuantizedWeight:
        raise NotImplementedError

    @property
    def trial_is_final(self) -> bool:
        return False

    @property
    def trial_needs(self) -> frozenset[str]:
        return frozenset()

    @property
    def prepass_needs(self) -> frozenset[str]:
        """What the sensitivity pre-pass collects: the layer Hessians for the layer-local
        kinds; for "measured" only what `trial` reads (the KL runs its own windows), so a
        data-free trial costs no block forwards there."""
        if self.sensitivity == "measured":
            return self.trial_needs
        return frozenset({HESSIAN})

    def check_mixed(self) -> None:
        """Validate the mixed-bit knobs (call from the config's __post_init__)."""
        method = getattr(self, "method", "this method")
        if isinstance(self.bits_choices, int):
            self.bits_choices = (self.bits_choices,)
        for bits in self.bits_choices:
            check_width("bits_choices entry", bits, self.mixable_bits, method)
        self.bits_choices = tuple(sorted(set(self.bits_choices)))
        if len(self.bits_choices) < 2:
            raise CompressError(f"bits_choices {self.bits_choices} needs at least two "
                                "bit-widths to mix, e.g. (2, 4); for one width set bits "
                                "and drop target_bits")
        check_sensitivity(self.sensitivity)
        for knob, example in (("sensitivity_windows", 4), ("sensitivity_tokens", 256)):
            if not positive_int(getattr(self, knob)):
                raise CompressError(f"{knob} {getattr(self, knob)!r} must be a positive "
                                    f"integer, e.g. {example}")
        if self.target_bits is not None:
            self._check_target()
        if self.table_bits is not None:
            # Imported here: table_bits quantizes with rtn, whose config inherits this class.
            from compress.quant.table_bits import check_table_bits

            self.table_bits = check_table_bits(self.table_bits)
            if self.target_bits is None or self.sensitivity != "measured":
                raise CompressError("table_bits is a choice of the mixed-bit allocation, "
                                    "judged by measured KL: set target_bits and keep "
                                    "sensitivity measured")

    def _check_target(self) -> None:
        target = self.target_bits
        if isinstance(target, bool) or not isinstance(target, int | float):
            raise CompressError(f"target_bits {target!r} must be a number, e.g. 3.7")
        self.target_bits = float(target)
        low, high = self.bits_choices[0], self.bits_choices[-1]
        low_cost, high_cost = self.choice_cost(low), self.choice_cost(high)
        if low_cost is not None and target < low_cost[0] - 1e-9:
            raise CompressError(f"target {target:g} bits is below the smallest choice's cost "
                                f"({low} bits store {low_cost[0]:.3f} bits per weight with "
                                f"{low_cost[1]}): raise target_bits or add a smaller choice")
        if high_cost is not None and target > high_cost[0] + 1e-9:
            raise CompressError(f"target {target:g} bits is above the largest choice's cost "
                                f"({high} bits store {high_cost[0]:.3f} bits per weight with "
                                f"{high_cost[1]}): lower target_bits or add a larger choice")
        if target < low:
            raise CompressError(f"target {target:g} bits is below the smallest choice ({low} "
                                "bits): raise target_bits or add a smaller choice")
        if high_cost is None and target > high:
            raise CompressError(f"target {target:g} bits is above the largest choice ({high} "
                                "bits): lower target_bits or add a larger choice")


def positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_width(what: str, bits: object, allowed: tuple[int, ...], method: str) -> None:
    if isinstance(bits, bool) or bits not in allowed:
        raise CompressError(f"{what} {bits!r} is not supported by {method}: use one of "
                            f"{', '.join(map(str, allowed))}")
