"""What every quantization method shares: config bases, the per-layer function type and
its registration.

A quantization method is one file holding a config and one pure function
`quantize_weight(weight, stats, config) -> AffineQuantized | PaletteQuantized`,
registered with `@register_quantizer(TheConfig)`. The block-sequential sweep does the
rest (`compress.quant.engine`): statistics, writing the dequantized weight back so later
blocks calibrate on the quantized model, and keeping the packed form for the artifact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch

from compress.config import MethodConfig, ignore_patterns, matches_any, register_handler
from compress.errors import CompressError
from compress.quant.grid import SUPPORTED_BITS
from compress.stats import KNOWN_STATS, LinearStats
from models.qformat import QuantizedWeight

# weight [out, in] fp32, its input statistics, the config -> the stored form
QuantizeFn = Callable[[torch.Tensor, LinearStats, "QuantConfig"], QuantizedWeight]

BACKENDS = ("toolkit", "nncf")


@dataclasses.dataclass
class QuantConfig(MethodConfig):
    """Knobs every quantization method has."""

    # Regexes over module names (e.g. "mlp.down_proj") left in floating point.
    ignore: tuple[str, ...] = ()

    # Which calibration statistics the method reads (see compress.stats).
    needs: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        self.ignore = ignore_patterns(self.ignore)
        assert self.needs <= KNOWN_STATS, self.needs

    def is_ignored(self, module_name: str) -> bool:
        return matches_any(module_name, self.ignore)


@dataclasses.dataclass
class IntQuantConfig(QuantConfig):
    """Integer (affine) weight quantization: RTN, GPTQ, AWQ."""

    # Bits per weight code: 2, 3, 4, 6 or 8.
    bits: int = 4
    # Inputs sharing one scale/zero point (32, 64, 128 ...); None = one per output channel.
    # 64, not the papers' usual 128: it divides every width of the default model
    # (SmolLM2's 576 is not a multiple of 128).
    group_size: int | None = 64
    # Symmetric grids store no zero points (zero = 2^(b-1)); asymmetric fit skewed rows.
    symmetric: bool = False
    # "toolkit": this package's implementation; "nncf": NNCF's compress_weights on the
    # same model and data, for a side-by-side comparison (INT4/INT8 only).
    backend: str = "toolkit"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.bits, bool) or self.bits not in SUPPORTED_BITS:
            raise CompressError(f"bits {self.bits!r} is not supported by {self.method}: use one "
                                f"of {', '.join(map(str, SUPPORTED_BITS))}")
        if self.group_size is not None and (
                isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                or self.group_size <= 0):
            raise CompressError(f"group_size {self.group_size!r} must be a positive integer "
                                "(e.g. 128) or omitted for per-channel scales")
        if self.backend not in BACKENDS:
            raise CompressError(f"backend {self.backend!r} is unknown: choose one of "
                                f"{', '.join(BACKENDS)}")


def register_quantizer(config_type: type[QuantConfig]) -> Callable[[QuantizeFn], QuantizeFn]:
    """`@register_quantizer(GPTQConfig)` on the method's pure `quantize_weight` function.

    Registers a `compress.apply` handler that runs the block-sequential quantization
    engine with that function (or NNCF, for `backend="nncf"`; with `target_bits`, the
    mixed bit-width plan of compress.quant.mixed_plan around it)."""

    def decorate(quantize_weight: QuantizeFn) -> QuantizeFn:
        def handler(model, config, calib, **engine_options):
            if getattr(config, "backend", "toolkit") == "nncf":
                from compress.quant.nncf_backend import quantize_with_nncf

                return quantize_with_nncf(model, config, calib, **engine_options)
            if getattr(config, "target_bits", None) is not None:
                from compress.quant.mixed_plan import quantize_mixed  # imports this module

                return quantize_mixed(model, config, calib, quantize_weight, **engine_options)
            from compress.quant.engine import quantize_blockwise  # engine imports this module

            return quantize_blockwise(model, config, calib, quantize_weight, **engine_options)

        handler.__name__ = f"{config_type.__name__}_handler"
        register_handler(config_type)(handler)
        config_type.quantize_weight = staticmethod(quantize_weight)
        return quantize_weight

    return decorate
