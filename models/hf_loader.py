"""Load a local Hugging Face causal-LM directory, from safetensors only.

Pickle checkpoints (`pytorch_model.bin`, `*.pt`) can run arbitrary code when loaded, so
a directory that offers only those is refused with a hint to convert; `trust_remote_code`
is never set, so a checkpoint cannot ship Python either. Everything that can be decided
before reading weights is (models/hf_config_check.py: a supported decoder with sane sizes;
models/checkpoint_check.py: every tensor present, with its shape), and what transformers
reports after loading is checked again, so a damaged checkpoint never loads half-random.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint_check import (
    INDEX_FILE,
    check_loading_info,
    check_tensors_match_config,
    read_checkpoint_headers,
)
from models.errors import ModelError
from models.hf_config_check import checked_hf_config, read_config_json
from models.quantized_loader import (
    edge_only_weights,
    load_quantized_module,
    quantization_layout,
)
from models.registry import LoadedModel
from models.weights_check import check_finite_weights

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load_hf_directory(path: Path, *, dtype: torch.dtype = torch.float32,
                      need_tokenizer: bool = True) -> LoadedModel:
    """Load `AutoModelForCausalLM` + tokenizer from `path` after checking every file."""
    _check_directory(path)
    config = checked_hf_config(path)
    files = edge_only_weights(path)  # packed weights that transformers must not open
    tensors = {} if files else read_checkpoint_headers(path)
    files = files or sorted({stored.file for stored in tensors.values()})
    layout = quantization_layout(files)
    if layout is not None:
        module, quantized = load_quantized_module(path, files, layout, dtype)
        check_finite_weights(module, str(path))
        tokenizer = load_tokenizer(path) if need_tokenizer else None
        return LoadedModel(module=module, tokenizer=tokenizer, source=str(path),
                           quantized=quantized)
    check_tensors_match_config(path, config, tensors)
    module = _load_checked_module(path, config, dtype)
    check_finite_weights(module, str(path))
    tokenizer = load_tokenizer(path) if need_tokenizer else None
    return LoadedModel(module=module, tokenizer=tokenizer, source=str(path))


def _load_checked_module(path: Path, config, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        module, info = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        # Reached only by what the checks above cannot see (e.g. an unreadable file).
        lines = str(exc).strip().splitlines()
        raise ModelError(
            f"{path} could not be loaded as a causal LM ({lines[0] if lines else type(exc)}"
            "): restore the checkpoint (re-download or re-save it with save_pretrained)"
        ) from None
    check_loading_info(str(path), info, tied=bool(getattr(config, "tie_word_embeddings", 0)))
    module.eval()
    return module


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
    read_config_json(path)  # present and JSON, before the weights are looked at
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not (path / INDEX_FILE).is_file():  # shards missing: says which
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise ModelError(
                f"{path} holds only pickle weights ({', '.join(pickles)}), which Edge Toolkit "
                "never loads because unpickling can run code: convert them to safetensors "
                "(e.g. load them yourself in a trusted session and call "
                "save_pretrained(dir, safe_serialization=True))"
            )
        raise ModelError(f"{path} holds no *.safetensors weights: save the model with safetensors")
