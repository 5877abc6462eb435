"""What every pruning method shares: its config base, the N:M pattern and the registration.

A pruning method is one file holding a `PruneConfig` subclass and one pure function
`prune_weight(weight, stats, sparsity, nm, config) -> new weight`, registered with
`@register_pruner(TheConfig)`. The block-sequential engine (`compress.engine`) does the
rest: calibration forwards, statistics, OWL's per-block ratios, ignored layers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import ClassVar

import torch

from compress.config import MethodConfig, ignore_patterns, matches_any, register_handler
from compress.errors import CompressError
from compress.stats import KNOWN_STATS, LinearStats

# weight [out, in] fp32, stats, this block's sparsity, (N zeros, per M) or None, config
PruneFn = Callable[[torch.Tensor, LinearStats, float, "tuple[int, int] | None", "PruneConfig"],
                   torch.Tensor]

LAYERWISE_CHOICES = ("uniform", "owl")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """'2:4' -> (2, 4): exactly N zeros in every M consecutive input weights of a row."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise CompressError(f"pattern {pattern!r} is not N:M: write it like 2:4 or 4:8")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise CompressError(f"pattern {pattern!r} needs 0 < N < M: try 2:4 or 4:8")
    return n, m


@dataclasses.dataclass
class PruneConfig(MethodConfig):
    """Knobs every pruning method has. Subclasses add their own and set `needs`."""

    # Fraction of weights set to zero in every pruned linear, per output row.
    # With `pattern` it must equal N/M (None means: take it from the pattern, else 0.5).
    sparsity: float | None = None
    # "N:M" semi-structured sparsity (N zeros in every M consecutive inputs), or None.
    pattern: str | None = None
    # Regexes over module names (e.g. "model.layers.0.self_attn.q_proj") left dense.
    ignore: tuple[str, ...] = ()
    # "uniform": every block gets `sparsity`; "owl": blocks with more activation outliers
    # get less (OWL, arXiv 2310.05175), keeping the mean at `sparsity`.
    layerwise: str = "uniform"
    # OWL's outlier threshold: a weight is an outlier when its Wanda score > M * mean.
    owl_m: float = 5.0
    # OWL's spread: block sparsities lie in [sparsity - lambda, sparsity + lambda].
    owl_lambda: float = 0.08

    # Which calibration statistics the method's prune_weight reads (see compress.stats).
    needs: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        self.ignore = ignore_patterns(self.ignore)
        nm = parse_pattern(self.pattern) if self.pattern is not None else None
        if self.sparsity is None:
            self.sparsity = nm[0] / nm[1] if nm else 0.5
        if not isinstance(self.sparsity, int | float) or not 0.0 < float(self.sparsity) < 1.0:
            raise CompressError(
                f"sparsity {self.sparsity!r} is outside (0, 1): pass e.g. --sparsity 0.5"
            )
        self.sparsity = float(self.sparsity)
        if nm and abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise CompressError(
                f"pattern {self.pattern} means sparsity {nm[0] / nm[1]:g}, not "
                f"{self.sparsity:g}: drop --sparsity or pass --sparsity {nm[0] / nm[1]:g}"
            )
        if self.layerwise not in LAYERWISE_CHOICES:
            raise CompressError(
                f"layerwise {self.layerwise!r} is unknown: choose one of "
                f"{', '.join(LAYERWISE_CHOICES)}"
            )
        if self.layerwise == "owl":
            self._check_owl(nm)
        assert self.needs <= KNOWN_STATS, self.needs

    def _check_owl(self, nm: tuple[int, int] | None) -> None:
        if nm:
            raise CompressError(
                "--layerwise owl varies sparsity per block, which an N:M pattern fixes: "
                "drop --pattern or --layerwise owl"
            )
        if self.owl_m <= 0:
            raise CompressError(f"owl_m {self.owl_m} must be > 0 (the paper uses 5)")
        if not 0 <= self.owl_lambda < min(self.sparsity, 1 - self.sparsity):
            raise CompressError(
                f"owl_lambda {self.owl_lambda} must keep every block's sparsity in (0, 1) "
                f"around {self.sparsity:g}: use a value below "
                f"{min(self.sparsity, 1 - self.sparsity):.3g}"
            )

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern) if self.pattern is not None else None

    def is_ignored(self, module_name: str) -> bool:
        return matches_any(module_name, self.ignore)


def register_pruner(config_type: type[PruneConfig]) -> Callable[[PruneFn], PruneFn]:
    """`@register_pruner(WandaConfig)` on the method's `prune_weight` function.

    Registers a `compress.apply` handler that runs the shared block-sequential engine
    with that function; the function itself stays a pure tensor -> tensor map.
    """

    def decorate(prune_weight: PruneFn) -> PruneFn:
        def handler(model, config, calib, **engine_options):
            from compress.engine import prune_blockwise  # engine imports this module

            return prune_blockwise(model, config, calib, prune_weight, **engine_options)

        handler.__name__ = f"{config_type.__name__}_handler"
        register_handler(config_type)(handler)
        config_type.prune_weight = staticmethod(prune_weight)
        return prune_weight

    return decorate
