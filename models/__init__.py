"""Model definitions, the registries (models by name, model families), loaders (artifact
directories, HF safetensors directories, GGUF) and adapters.

`models.load(spec)` (the same function as `load_model`) loads any of them; note that
`models.load` is that function, the module is `models.load` only in `from ... import`."""

from models import (  # noqa: F401
    fake_cnn,
    fake_llm,
    fake_moe_llm,
    families,  # noqa: F401  (registers every model family)
    fashion_mnist,
    portrait,
    smollm2,
    vmoe,
)
from models.adapter import DecoderLayout, decoder_layout, register_layout
from models.errors import ModelError
from models.family import ModelFamily, family_named, family_of_module, list_families
from models.load import load_model
from models.registry import LoadedModel, create_model, list_models, register_model

load = load_model

__all__ = [
    "DecoderLayout", "LoadedModel", "ModelError", "ModelFamily", "create_model",
    "decoder_layout", "family_named", "family_of_module", "list_families", "list_models",
    "load", "load_model", "register_layout", "register_model",
]
