"""What the image families (vmoe, portrait, cnn) share: the weights as one
`model.safetensors` of the module's state dict, the manifest's "input" section, whose
mean/std give the normalisation x' = (x / 255 - mean) / std the exporters fold in, and a
base class for a family whose artifact is that file plus a "config" and "input"."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.errors import ModelError
from models.family import ModelFamily
from models.weights_check import check_state_matches

WEIGHTS = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class InputSection:
    """The "input" section's required part; other keys (dataset, layout ...) describe."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, section: object, channels: int, source: str) -> InputSection:
        try:
            parsed = cls(tuple(float(v) for v in section["mean"]),
                         tuple(float(v) for v in section["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source} lacks a valid `input` section ({type(exc).__name__}: "
                             f"{exc}): re-create the artifact") from None
        if len(parsed.mean) != channels or len(parsed.std) != channels or min(parsed.std) <= 0:
            raise ModelError(f"{source}: input mean/std must be {channels} values each "
                             "(std > 0): re-create the artifact")
        return parsed


@dataclasses.dataclass(frozen=True)
class ImageSection:
    """An image family's manifest section: its model config and its "input" section."""

    config: Any
    input: InputSection

    @classmethod
    def of(cls, manifest: dict, source: str, parse: Callable[[object], Any], what: str,
           channels: Callable[[Any], int], fix: str = "re-create the artifact") -> ImageSection:
        """`parse(manifest["config"])` and the input section for `channels(config)`
        channels, or one ModelError naming `source`, the family (`what`, e.g. "V-MoE")
        and `fix`."""
        try:
            config = parse(manifest["config"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{source} lacks a valid {what} config section "
                             f"({type(exc).__name__}: {exc}): {fix}") from None
        return cls(config, InputSection.of(manifest.get("input"), channels(config), source))


def write_state(staging: Path, module: nn.Module) -> None:
    state = {name: tensor.detach().contiguous().cpu()
             for name, tensor in module.state_dict().items()}
    save_file(state, str(staging / WEIGHTS))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path} is missing: the artifact is incomplete, re-create it")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types on bad headers
        raise ModelError(f"{path} is not a readable safetensors file ({exc}): re-create "
                         "the artifact") from None


def load_state(path: Path, module: nn.Module) -> nn.Module:
    """`module` with the weights in `path / WEIGHTS`, which must fit it exactly."""
    state = read_safetensors(path / WEIGHTS)
    check_state_matches(path / WEIGHTS, module, state)
    module.load_state_dict(state, strict=True)
    return module.eval()


def input_of(loaded_vision, **extra) -> dict:
    """The "input" section of a live model's VisionInput."""
    return {"mean": list(loaded_vision.mean), "std": list(loaded_vision.std), **extra}


class StateDictFamily(ModelFamily):
    """An image family whose module is one class and whose weights are its state dict."""

    kind = "vision"
    task = "image-classification"
    section_keys = ("config", "input")
    module_class: ClassVar[type[nn.Module]] = nn.Module

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_class)

    def write(self, staging: Path, loaded, manifest: dict) -> None:
        write_state(staging, loaded.module)
