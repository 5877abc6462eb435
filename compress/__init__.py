"""Model-agnostic compression methods and the block-sequential calibration engine.

Importing this package registers every method; `compress.apply` dispatches on the config.
"""

from compress import experts, prune, quant, recovery, rotate, structured  # noqa: F401  (registers every method)
from compress.api import apply
from compress.config import MethodConfig, registered_methods
from compress.errors import CompressError
from compress.prune import MagnitudeConfig, SparseGPTConfig, WandaConfig

__all__ = [
    "CompressError", "MagnitudeConfig", "MethodConfig", "SparseGPTConfig", "WandaConfig",
    "apply", "registered_methods",
]
