"""Load a GGUF checkpoint (llama.cpp's format) as a dequantized fp32 transformers model.

transformers' GGUF reader dequantizes every tensor (Q4_1, Q8_0, ...) to float and embeds
the tokenizer; that takes 20-40 s for a 135M model, so `cache_as_safetensors` writes the
result once as an ordinary safetensors directory that loads in under a second.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch

from models.checkpoint_check import check_loading_info
from models.errors import ModelError
from models.hf_config_check import (
    check_config_values,
    check_supported_architecture,
    supported_families,
)
from models.registry import LoadedModel
from models.weights_check import check_finite_weights

GGUF_MAGIC = b"GGUF"
_REDOWNLOAD = "re-download the GGUF file or convert it again"


def load_gguf(path: Path) -> LoadedModel:
    """The GGUF's config is read and checked (a supported decoder, sane sizes) before its
    tensors are dequantized; what transformers then reports missing or mismatched (a
    corrupt tensor name) is refused rather than initialised at random."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _check_gguf_header(path)
    with _one_line_errors(path):
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    for check in (check_supported_architecture, check_config_values):
        check(config.to_dict(), str(path), named="GGUF metadata", fix=_REDOWNLOAD)
    with _one_line_errors(path), _honour_disabled_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        module, info = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, config=config, dtype=torch.float32,
            output_loading_info=True)
    check_loading_info(str(path), info, tied=bool(getattr(config, "tie_word_embeddings", 0)))
    _drop_gguf_quantizer(module)
    module.eval()
    check_finite_weights(module, str(path))
    return LoadedModel(module=module, tokenizer=tokenizer, source=str(path))


@contextlib.contextmanager
def _honour_disabled_progress_bars():
    """transformers' GGUF reader draws its bar with plain tqdm, ignoring the
    `transformers.utils.logging.disable_progress_bar()` that the CLI sets (the toolkit
    reports its own progress); pass the setting on for the length of one load."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = getattr(gguf_utils, "tqdm", None)
    if original is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


@contextlib.contextmanager
def _one_line_errors(path: Path):
    """A corrupt GGUF makes the reader fail in many ways (struct.error, UnicodeDecodeError,
    OverflowError on a huge length, a reshape ValueError, MemoryError): all are one line."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the third-party reader
        lines = str(exc).strip().splitlines()
        raise ModelError(
            f"{path} could not be read as a GGUF causal LM ({type(exc).__name__}: "
            f"{lines[0][:200] if lines else ''}): it may be truncated or corrupt "
            f"({_REDOWNLOAD}), or of an unsupported architecture: pass a GGUF of a "
            f"supported family ({supported_families()}) or a safetensors directory"
        ) from None


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
