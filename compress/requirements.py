"""Which methods apply to which model, decided by the adapter each method reaches models
through (`MethodConfig.adapter`), never by a list of model classes: a decoder layout
(models/adapter.py), mixture-of-experts routing groups (models/moe_groups.py) or channel
groups (models/channel_groups.py). Asked before any work, so a recipe that cannot run on
a model fails in one line before calibration, and the registry tests generate every
(model, method) pair that applies."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from compress.config import MethodConfig, registered_methods
from models.adapter import decoder_layout, residual_blocks
from models.channel_groups import channel_prunable
from models.errors import ModelError
from models.moe_groups import moe_groups


def _decoder_layout(model: nn.Module) -> None:
    try:
        decoder_layout(model)
    except (ModelError, AttributeError, TypeError, ValueError):
        raise ModelError(f"{type(model).__name__} is not a decoder language model: this "
                         "method compresses the linears of a decoder's blocks (e.g. "
                         "fake-llama, smollm2-135m or a Llama-family HF directory)") from None


def _residual_stream(model: nn.Module) -> None:
    """A decoder whose every block is a known pre-norm attention + MLP (rotations rewrite
    every tensor that reads or writes the residual stream, so none may be unknown)."""
    _decoder_layout(model)
    try:
        residual_blocks(decoder_layout(model))
    except ModelError as exc:
        raise ModelError(f"{exc}; rotate applies to Llama-shaped decoders, dense or "
                         "mixture-of-experts (e.g. fake-llama, smollm2-135m, "
                         "fake-moe-llm)") from None


# need -> a check that raises ModelError naming what the model lacks.
_CHECKS: dict[str, Callable[[nn.Module], object]] = {
    "decoder_layout": _decoder_layout,
    "residual_stream": _residual_stream,
    "moe_groups": moe_groups,
    "channel_groups": channel_prunable,
}


def unmet_need(config: MethodConfig | type[MethodConfig], model: nn.Module) -> str | None:
    """None when `config`'s method can run on `model`, else the one-line reason."""
    need = config.adapter
    if need is None:
        return None
    try:
        _CHECKS[need](model)
    except ModelError as exc:
        return str(exc)
    return None


def applicable_methods(model: nn.Module, *, standalone: bool = True) -> list[str]:
    """Names of the registered methods that apply to `model`; `standalone` leaves out
    those that need another stage first (distillation needs a compressed student)."""
    return [name for name, config_type in registered_methods().items()
            if (config_type.adapter is not None or not standalone)
            and unmet_need(config_type, model) is None]
