"""Load a GGUF checkpoint (llama.cpp's format) as a dequantized fp32 transformers model.

transformers' GGUF reader dequantizes every tensor (Q4_1, Q8_0, ...) to float and embeds
the tokenizer; that takes 20-40 s for a 135M model, so `cache_as_safetensors` writes the
result once as an ordinary safetensors directory that loads in under a second.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from models.errors import ModelError
from models.registry import LoadedModel
from models.weights_check import check_finite_weights

GGUF_MAGIC = b"GGUF"


def load_gguf(path: Path) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_header(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        module = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError, IndexError, struct.error) as exc:
        raise ModelError(
            f"{path} could not be read as a GGUF causal LM ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): it may be truncated or corrupt "
            "(re-download it), or of an unsupported architecture: pass a GGUF of llama, "
            "mistral, qwen2 or gemma, or a safetensors directory"
        ) from None
    _drop_gguf_quantizer(module)
    module.eval()
    check_finite_weights(module, str(path))
    return LoadedModel(module=module, tokenizer=tokenizer, source=str(path))


def cache_as_safetensors(loaded: LoadedModel, target: Path) -> None:
    """Write `loaded` as a safetensors HF directory at `target`, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        loaded.module.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
        if target.exists():  # another process won the race; keep its copy
            return
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_gguf_header(path: Path) -> None:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (no GGUF magic bytes): pass a .gguf model")


def _drop_gguf_quantizer(module: torch.nn.Module) -> None:
    """The weights are already dequantized floats; forget the GGUF quantizer so that
    `save_pretrained` writes plain safetensors instead of refusing."""
    module.hf_quantizer = None
    module.is_quantized = False
    if hasattr(module.config, "quantization_config"):
        del module.config.quantization_config
