"""Load a local Hugging Face causal-LM directory, from safetensors only.

Pickle checkpoints (`pytorch_model.bin`, `*.pt`) can run arbitrary code when loaded, so
a directory that offers only those is refused with a hint to convert; `trust_remote_code`
is never set, so a checkpoint cannot ship Python either.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.errors import ModelError
from models.quantized_loader import load_quantized_module, quantization_layout
from models.registry import LoadedModel
from models.safetensors_check import check_safetensors_file
from models.weights_check import check_finite_weights

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load_hf_directory(path: Path, *, dtype: torch.dtype = torch.float32,
                      need_tokenizer: bool = True) -> LoadedModel:
    """Load `AutoModelForCausalLM` + tokenizer from `path` after checking every file."""
    from transformers import AutoModelForCausalLM

    _check_directory(path)
    files = sorted(path.glob("*.safetensors"))
    layout = quantization_layout(files)
    if layout is not None:
        module, quantized = load_quantized_module(path, files, layout, dtype)
        check_finite_weights(module, str(path))
        tokenizer = load_tokenizer(path) if need_tokenizer else None
        return LoadedModel(module=module, tokenizer=tokenizer, source=str(path),
                           quantized=quantized)
    try:
        module = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path} could not be loaded as a causal LM ({first_line}): it must hold a "
            "transformers config.json for a decoder model (Llama, Mistral, Qwen2, Gemma ...)"
        ) from None
    module.eval()
    check_finite_weights(module, str(path))
    tokenizer = load_tokenizer(path) if need_tokenizer else None
    return LoadedModel(module=module, tokenizer=tokenizer, source=str(path))


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"{path} has no usable tokenizer ({type(exc).__name__}): copy the original "
            "model's tokenizer files (tokenizer.json, tokenizer_config.json) into it"
        ) from None


def _check_directory(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(
            f"{path} has no config.json: pass a Hugging Face model directory, a .gguf file "
            "or a registered name (see `toolkit models`)"
        )
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{config} is not valid JSON: restore the original config.json") from None
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise ModelError(
                f"{path} holds only pickle weights ({', '.join(pickles)}), which Edge Toolkit "
                "never loads because unpickling can run code: convert them to safetensors "
                "(e.g. load them yourself in a trusted session and call "
                "save_pretrained(dir, safe_serialization=True))"
            )
        raise ModelError(f"{path} holds no *.safetensors weights: save the model with safetensors")
    for file in weights:
        check_safetensors_file(file)
