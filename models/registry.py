"""Models by name: `@register_model("smollm2-135m")` and `create_model(name)`.

A registered builder returns a `LoadedModel` (module + tokenizer + where the weights came
from). Every family also registers a tiny "fake" config with random weights for tests;
tests loop over `list_models()` instead of naming models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from models.errors import ModelError


@dataclasses.dataclass
class LoadedModel:
    """A model ready for compression or evaluation."""

    module: nn.Module
    tokenizer: Any  # a transformers tokenizer; None for vision models
    # Human-readable origin recorded in manifests: registry name, directory or GGUF file.
    source: str
    # Registered name when it came from the registry, else None.
    name: str | None = None
    # Packed form of quantized linears (models.qformat) when loaded from such an artifact.
    quantized: dict[str, Any] | None = None
    # Vision families: input shape, normalisation and images (models.vision_input).
    vision: Any = None
    # The model family (models.family): from the registration, the artifact's manifest,
    # or, when not given, the family that owns the module.
    family: str | None = None

    def __post_init__(self) -> None:
        if self.family is None:
            from models.family import family_of_module

            try:
                self.family = family_of_module(self.module).name
            except ModelError:
                self.family = None  # a module no family owns: it cannot be saved


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # a registered family name (models.family), e.g. "llm", "portrait"
    weights: str  # where the weights come from, shown by `toolkit models`
    description: str
    fake: bool  # tiny random-weight config for tests
    builder: Callable[[], LoadedModel]
    # The on-disk checkpoint (a safetensors directory) the builder reads, made ready on
    # call, for engines that read weights lazily instead of building the module; None when
    # the weights exist only in memory (fake models).
    checkpoint: Callable[[], Any] | None = None


_REGISTRY: dict[str, ModelSpec] = {}
# What `family=` meant before the family registry: a kind. "llm" is also the LLM family's
# name; a "vision" registration's family is found from its module when it is built.
LEGACY_KINDS = ("vision",)


def register_model(
    name: str, *, family: str, weights: str, description: str, fake: bool = False,
    checkpoint: Callable[[], Any] | None = None,
) -> Callable[[Callable[[], LoadedModel]], Callable[[], LoadedModel]]:
    """Decorator registering a zero-argument builder under `name`."""

    def decorate(builder: Callable[[], LoadedModel]) -> Callable[[], LoadedModel]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, family, weights, description, fake, builder,
                                    checkpoint)
        return builder

    return decorate


def create_model(name: str) -> LoadedModel:
    spec = _REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelError(f"unknown model {name!r}: choose one of {known} (see `toolkit models`)")
    loaded = spec.builder()
    loaded.name = name
    if spec.family not in LEGACY_KINDS:
        loaded.family = spec.family
    return loaded


def registered_checkpoint(name: str):
    """The safetensors directory behind registered model `name` (built when needed), or
    None when it has none on disk."""
    spec = _REGISTRY[name]
    return spec.checkpoint() if spec.checkpoint is not None else None


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def registered_family(name: str) -> str:
    """The family a registered name was registered with (no weights are built): a family
    name, or for an old-style registration its kind, "llm" or "vision"."""
    return _REGISTRY[name].family


def list_models(*, include_fake: bool = True) -> list[ModelSpec]:
    return [s for s in sorted(_REGISTRY.values(), key=lambda s: s.name)
            if include_fake or not s.fake]
