"""Load an Edge Toolkit artifact whose linears are stored packed (models.qformat).

The file's safetensors metadata names the quantized linears and their layout; the model
is built from config.json, every quantized linear gets its dequantized weight, and the
packed form is kept on the LoadedModel for exporters that write low-bit files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from models.errors import ModelError
from models.qformat import QUANT_METADATA_KEY, decode_layout, quantized_from_state


def quantization_layout(files: list[Path]) -> dict | None:
    """The layout recorded in the files' metadata, or None for plain float weights."""
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            text = (handle.metadata() or {}).get(QUANT_METADATA_KEY)
        if text is not None:
            try:
                return decode_layout(text)
            except ValueError as exc:
                raise ModelError(f"{file}: {exc}: re-create the artifact with "
                                 "`toolkit compress` or `toolkit run`") from None
    return None


def load_quantized_module(path: Path, files: list[Path], layout: dict,
                          dtype: torch.dtype = torch.float32):
    """(module, packed weights) for a directory whose linears are stored packed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    module = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    try:
        quantized = quantized_from_state(tensors, layout)
        for name, packed in quantized.items():
            tensors[f"{name}.weight"] = packed.dequantize().to(dtype)
    except ValueError as exc:
        raise ModelError(f"{path}: packed weights do not match their layout ({exc}): "
                         "re-create the artifact") from None
    packed_suffixes = (".qweight", ".scales", ".qzeros", ".input_scale", ".qindices", ".lut")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()
             if not (k.endswith(packed_suffixes) and k.rsplit(".", 1)[0] in quantized)}
    result = module.load_state_dict(state, strict=False)
    tied = _tied_names(module)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        problem = (f"missing {missing[0]}" if missing
                   else f"unexpected {result.unexpected_keys[0]}")
        raise ModelError(f"{path}: weights do not fit config.json ({problem}): "
                         "re-create the artifact")
    module.tie_weights()
    module.eval()
    return module, quantized


def _tied_names(module) -> set[str]:
    """Parameter names that share storage with an earlier one (e.g. lm_head.weight)."""
    seen, tied = set(), set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        pointer = tensor.data_ptr()
        if pointer in seen:
            tied.add(name)
        seen.add(pointer)
    return tied
