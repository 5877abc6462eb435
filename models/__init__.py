"""Model definitions, the registry, loaders (HF safetensors directories, GGUF) and adapters."""

from models import fake_cnn, fake_llm, fake_moe_llm, fashion_mnist, portrait, smollm2, vmoe  # noqa: F401
from models.adapter import DecoderLayout, decoder_layout, register_layout
from models.errors import ModelError
from models.load import load_model
from models.registry import LoadedModel, create_model, list_models, register_model

__all__ = [
    "DecoderLayout", "LoadedModel", "ModelError", "create_model", "decoder_layout",
    "list_models", "load_model", "register_layout", "register_model",
]
