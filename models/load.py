"""One entry point for every way a user names a model: registry name, HF directory, GGUF."""

from __future__ import annotations

import json
from pathlib import Path

from models.errors import ModelError
from models.gguf_loader import load_gguf
from models.hf_loader import load_hf_directory
from models.mixtral_io import config_model_type
from models.mixtral_layout import MIXTRAL_MODEL_TYPE
from models.registry import LoadedModel, create_model, is_registered, registered_family


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
        family = _manifest_family(path)
        if family == PORTRAIT_FAMILY:
            from models.portrait_artifact import load_portrait_directory

            return load_portrait_directory(path)
        if family in VISION_ARTIFACT_FAMILIES:
            from models.vmoe_artifact import load_vmoe_directory

            return load_vmoe_directory(path)
        # A Mixtral checkpoint loads as the toolkit's MoE LM, which drop-experts can edit.
        if family == MOE_LM_FAMILY or config_model_type(path) == MIXTRAL_MODEL_TYPE:
            from models.moe_lm_artifact import load_moe_lm_directory

            return load_moe_lm_directory(path)
        return load_hf_directory(path)
    if path.suffix.lower() == ".gguf":
        return load_gguf(path)
    if path.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        raise ModelError(f"{path} is a pickle file, which Edge Toolkit never loads: convert it "
                         "to a safetensors Hugging Face directory")
    raise ModelError(f"{path} is a file but not a .gguf: pass a .gguf file or a directory")


# toolkit.json "family" values of artifact directories that hold image models.
VISION_ARTIFACT_FAMILIES = ("vmoe", "portrait")
PORTRAIT_FAMILY = "portrait"
MOE_LM_FAMILY = "moe-llm"


def model_family(spec: str) -> str:
    """"vision" or "llm" without loading weights: the registry's family for a name, the
    manifest's for an artifact directory, "llm" for anything else (HF directory, GGUF)."""
    if is_registered(spec):
        return registered_family(spec)
    return "vision" if _manifest_family(Path(spec).expanduser()) in VISION_ARTIFACT_FAMILIES \
        else "llm"


def _manifest_family(directory: Path) -> str | None:
    """The "family" an artifact directory's toolkit.json names, if any."""
    manifest = directory / "toolkit.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("family")
    except (ValueError, AttributeError, OSError):
        return None  # the family's loader names a broken manifest properly
