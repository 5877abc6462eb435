"""The LLM family: a Hugging Face decoder (Llama, Mistral, Qwen2, Gemma ...) read from a
safetensors directory or a GGUF file, written as a Hugging Face directory (config,
tokenizer, weights; quantized linears packed by models/families/llm_weights.py).

It is the fallback family: a directory without toolkit.json, or a .gguf file, is an LLM
unless a more specific family claims it. Its manifest section is empty: config.json and
the weights' metadata say everything needed to rebuild it. LoRA recovery adapters
(models/qformat/lora.py) are written beside the weights as `lora_adapters.safetensors`
and attached again on read."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from models.adapter import decoder_layout
from models.families.llm_weights import interop_section, write_quantized_weights
from models.family import Adapters, ModelFamily, register_family
from models.gguf_loader import load_gguf
from models.hf_loader import load_hf_directory
from models.qformat.lora import LORA_FILE, adapters_of, attach_saved_adapters, save_adapters
from models.registry import LoadedModel
from models.upcycle import moe_layers

GGUF_SUFFIX = ".gguf"


def is_hf_decoder(module: nn.Module) -> bool:
    """A transformers causal LM: a config and input embeddings to find its blocks by."""
    return (getattr(module, "config", None) is not None
            and callable(getattr(module, "get_input_embeddings", None)))


@register_family("llm")
class LlmFamily(ModelFamily):
    kind = "llm"
    fallback = True

    def owns(self, module: nn.Module) -> bool:
        return is_hf_decoder(module) and not moe_layers(module)

    def claims(self, path: Path) -> bool:
        return path.is_dir() or path.suffix.lower() == GGUF_SUFFIX

    def read(self, path: Path, manifest: dict | None) -> LoadedModel:
        loaded = load_gguf(path) if path.is_file() else load_hf_directory(path)
        loaded.family = self.name
        if path.is_dir():
            attach_saved_adapters(path, loaded.module)
        return loaded

    def write(self, staging: Path, loaded: LoadedModel, manifest: dict) -> None:
        if loaded.quantized:
            write_quantized_weights(staging, loaded.module, loaded.quantized)
            manifest["interop"] = interop_section(loaded.quantized)  # who else loads it
        else:
            loaded.module.save_pretrained(staging, safe_serialization=True)
        adapters = adapters_of(loaded.module)
        if adapters:
            save_adapters(staging / LORA_FILE, adapters)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(staging)

    def adapters(self, module: nn.Module) -> Adapters:
        return Adapters(decoder_layout=lambda: decoder_layout(module))
