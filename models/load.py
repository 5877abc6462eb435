"""One entry point for every way a user names a model: registry name, artifact directory,
Hugging Face directory, GGUF file. Which reader runs is the family registry's answer
(models.family): an artifact's toolkit.json names its family; a directory without one
or a file is read by the family that claims it (the LLM family unless a more specific
one, e.g. the MoE LM family for a Mixtral checkpoint, does)."""

from __future__ import annotations

from pathlib import Path

from models.errors import ModelError
from models.family import ModelFamily, family_for_path, family_named
from models.manifest import MANIFEST_FILE, check_manifest, read_manifest
from models.registry import (
    LEGACY_KINDS,
    LoadedModel,
    create_model,
    is_registered,
    registered_family,
)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load_model(spec: str) -> LoadedModel:
    """`spec` is a registered name (`toolkit models`), a directory, or a `.gguf` file."""
    if is_registered(spec):
        return create_model(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(
            f"model {spec!r} is neither a registered name nor an existing path: check the "
            "path, or pick a name from `toolkit models`"
        )
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is not None:
            head = check_manifest(manifest, str(path / MANIFEST_FILE))
            return family_named(head.family).read(path, manifest)
        return _claiming_family(path).read(path, None)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelError(f"{path} is a pickle file, which Edge Toolkit never loads: convert it "
                         "to a safetensors Hugging Face directory")
    return _claiming_family(path).read(path, None)


load = load_model


def _claiming_family(path: Path) -> ModelFamily:
    family = family_for_path(path)
    if family is None:
        raise ModelError(f"{path} is a file but not a .gguf: pass a .gguf file or a directory")
    return family


def family_of(spec: str) -> ModelFamily | None:
    """The family of a model spec without loading weights: the registration's for a name,
    the manifest's for an artifact directory, the claiming family for other paths; None
    for an old-style registration (kind only) or a path no family reads."""
    if is_registered(spec):
        name = registered_family(spec)
        return None if name in LEGACY_KINDS else family_named(name, source=spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            manifest = read_manifest(path)
        except ModelError:
            return None  # the loader names a broken manifest properly
        if manifest is not None:
            try:
                return family_named(manifest["family"], source=str(path))
            except ModelError:
                return None
    return family_for_path(path) if path.exists() else None


def model_family(spec: str) -> str:
    """The kind of model `spec` names, "llm" (token model) or "vision" (image model),
    without loading weights, as the family registry answers it (see `family_of`); "llm"
    when nothing more specific is known, as a path the loader will then check."""
    if is_registered(spec) and registered_family(spec) in LEGACY_KINDS:
        return registered_family(spec)
    family = family_of(spec)
    return family.kind if family is not None else "llm"
