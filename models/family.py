"""Model families by name: `@register_family("vmoe") class VMoEFamily(ModelFamily)`.

A family is everything the toolkit needs to know about one kind of model, in one class:
which live modules belong to it (`owns`), how its artifact files are read and written
(`read`, `write`), what it records in the manifest (`section`, checked by the family's
small dataclass in `check_section`), whether it is a token model or an image model (`kind`:
which data and evaluation the toolkit uses), and the adapters compression methods work
through (`adapters`). `models.load` and `toolkit.artifacts.save_model_artifact` ask this
registry; nothing branches on family names. A new family is one module under
`models/families/` plus its import in `models/families/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from models.errors import ModelError

KINDS = ("llm", "vision")
# What a family's models do, which decides how the toolkit calibrates and evaluates them
# (toolkit/workflows registers one workflow per task): a new family of an existing task
# needs no toolkit change.
TASKS = ("text-generation", "image-classification", "image-segmentation")
_FAMILIES: dict[str, ModelFamily] = {}


@dataclasses.dataclass(frozen=True)
class Adapters:
    """What compression methods may use of a live module of this family; None = not
    applicable. Methods see these protocols, never a concrete model class."""

    decoder_layout: Callable[[], Any] | None = None  # models.adapter.DecoderLayout
    moe_groups: Callable[[], list] | None = None  # models.moe_groups.MoeGroup list
    # Hook for structured pruning's channel-group protocol (models/channel_groups.py):
    # a family that supports channel pruning returns its groups here.
    channel_groups: Callable[[], list] | None = None


class ModelFamily:
    """Base class of a family; subclasses override what applies to them."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "llm"
    task: ClassVar[str] = "text-generation"  # one of TASKS
    # Top-level manifest keys that hold the family's section (e.g. ("moe",)).
    section_keys: ClassVar[tuple[str, ...]] = ()
    # Safetensors files the family writes that are data, not weights (not in weights_bytes).
    data_files: ClassVar[tuple[str, ...]] = ()
    # Reads a directory without toolkit.json / a file when no other family claims it.
    fallback: ClassVar[bool] = False

    def owns(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def claims(self, path: Path) -> bool:
        """Whether this family reads `path` (a file, or a directory without toolkit.json)."""
        return False

    def read(self, path: Path, manifest: dict | None) -> Any:
        """The LoadedModel in `path`; `manifest` is the upgraded toolkit.json or None."""
        raise NotImplementedError

    def write(self, staging: Path, loaded: Any, manifest: dict) -> None:
        """Write the model's files into the existing directory `staging`; may add to the
        family's section of `manifest` (e.g. the layout the weights were written in)."""
        raise NotImplementedError

    def section(self, loaded: Any) -> dict[str, Any]:
        """{key: value} for each of `section_keys`, computed from the live model."""
        return {}

    def check_section(self, manifest: dict, source: str) -> None:
        """Raise ModelError naming `source` when the family's section is not valid."""

    def adapters(self, module: nn.Module) -> Adapters:
        return Adapters()


def register_family(name: str) -> Callable[[type[ModelFamily]], type[ModelFamily]]:
    """Class decorator: one instance of the family class is registered under `name`."""

    def decorate(cls: type[ModelFamily]) -> type[ModelFamily]:
        if name in _FAMILIES:
            raise RuntimeError(f"model family {name!r} is already registered")
        if cls.kind not in KINDS:
            raise RuntimeError(f"family {name!r}: kind must be one of {KINDS}")
        if cls.task not in TASKS:
            raise RuntimeError(f"family {name!r}: task must be one of {TASKS}")
        cls.name = name
        _FAMILIES[name] = cls()
        return cls

    return decorate


def _ensure_loaded() -> None:
    import models.families  # noqa: F401  (registers every family on first use)


def list_families() -> list[ModelFamily]:
    _ensure_loaded()
    return [_FAMILIES[name] for name in sorted(_FAMILIES)]


def family_named(name: str, *, source: str = "the artifact") -> ModelFamily:
    _ensure_loaded()
    family = _FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        raise ModelError(f"{source} names model family {name!r}, which this toolkit does not "
                         f"know (known: {', '.join(sorted(_FAMILIES))}): re-create it, or "
                         "upgrade Edge Toolkit")
    return family


def family_of_module(module: nn.Module) -> ModelFamily:
    """The one family that owns a live module."""
    owners = [family for family in list_families() if family.owns(module)]
    if len(owners) != 1:
        found = ", ".join(f.name for f in owners) or "none"
        raise ModelError(f"{type(module).__name__} belongs to {found} of the model families "
                         f"({', '.join(f.name for f in list_families())}): it cannot be "
                         "saved as an artifact")
    return owners[0]


def family_for_path(path: Path) -> ModelFamily | None:
    """The family that reads a file or a directory without toolkit.json: a specific
    claim first (e.g. a Mixtral checkpoint), then the fallback family."""
    families = list_families()
    for family in sorted(families, key=lambda f: f.fallback):
        if family.claims(path):
            return family
    return None
