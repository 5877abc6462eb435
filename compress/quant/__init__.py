"""Quantization methods: importing this package registers RTN, GPTQ, AWQ and palettization.

Each method's stored form is one of `models.qformat`'s packed formats, so the artifact,
the loaders and the exporters share one definition of the bits on disk."""

from compress.quant.awq import AWQConfig
from compress.quant.base import IntQuantConfig, QuantConfig
from compress.quant.gptq import GPTQConfig
from compress.quant.palettize import PalettizeConfig
from compress.quant.report import QuantReport
from compress.quant.rtn import RTNConfig

__all__ = ["AWQConfig", "GPTQConfig", "IntQuantConfig", "PalettizeConfig", "QuantConfig",
           "QuantReport", "RTNConfig"]
