"""Load an Edge Toolkit artifact whose linears are stored packed (models.qformat).

The file's safetensors metadata names the quantized linears and their layout: format
"edge-quant/2" is a compressed-tensors checkpoint (`model.safetensors`, which transformers
loads too), "edge-quant/1" Edge Toolkit's own packing (older artifacts in
`model.safetensors`, and artifacts transformers cannot load in `EDGE_ONLY_FILE`:
models/families/llm_weights.py). The model is built from config.json, every quantized
linear gets its dequantized weight, and the packed form is kept on the LoadedModel (same
codes, scales and zero points whichever the format) for exporters that write low-bit files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from models.errors import ModelError
from models.qformat import QUANT_METADATA_KEY, quantized_from_state
from models.qformat.compressed_tensors import (
    CT_METHOD,
    CT_SUFFIXES,
    quantized_from_ct_state,
)
from models.qformat.layout import CT_LAYOUT_FORMAT, read_layout
from models.safetensors_check import check_safetensors_file

EDGE_ONLY_FILE = "edge_toolkit_quantized.safetensors"
_EDGE_SUFFIXES = (".qweight", ".scales", ".qzeros", ".input_scale", ".qindices", ".lut")
_RECREATE = "re-create the artifact with `toolkit compress` or `toolkit run`"


def edge_only_weights(path: Path) -> list[Path]:
    """[the packed weights file that only Edge Toolkit reads] when directory `path` holds
    one (checked like any safetensors file), else []."""
    file = path / EDGE_ONLY_FILE
    if not file.is_file():
        return []
    check_safetensors_file(file)
    if quantization_layout([file]) is None:
        raise ModelError(f"{file} has no quantization layout in its metadata: {_RECREATE}")
    return [file]


def quantization_layout(files: list[Path]) -> tuple[str, dict] | None:
    """(layout format, layer name -> meta) recorded in the files' metadata, or None for
    plain float weights."""
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            text = (handle.metadata() or {}).get(QUANT_METADATA_KEY)
        if text is not None:
            try:
                return read_layout(text)
            except ValueError as exc:
                raise ModelError(f"{file}: {exc}: {_RECREATE}") from None
    if files:
        _refuse_foreign_compressed_tensors(files[0].parent)
    return None


def _refuse_foreign_compressed_tensors(path: Path) -> None:
    """A compressed-tensors checkpoint Edge Toolkit did not write (no layout in its
    metadata) has no float weights for the plain loader: say so, not "tensors missing"."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # the config checks name what is wrong with it
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(quantization, dict) and quantization.get("quant_method") == CT_METHOD:
        raise ModelError(
            f"{path} is a compressed-tensors checkpoint that Edge Toolkit did not write, "
            "which it does not read: load it with transformers (from_pretrained(DIR, "
            "quantization_config=CompressedTensorsConfig(dequantize=True))), save_pretrained "
            "a float copy and pass that")


def load_quantized_module(path: Path, files: list[Path], layout: tuple[str, dict],
                          dtype: torch.dtype = torch.float32):
    """(module, packed weights) for a directory whose linears are stored packed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    # The module holds float weights: a `quantization_config` kept on it would be written
    # again by save_pretrained over float tensors.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    module = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    fmt, layers = layout
    read, suffixes = ((quantized_from_ct_state, CT_SUFFIXES) if fmt == CT_LAYOUT_FORMAT
                      else (quantized_from_state, _EDGE_SUFFIXES))
    try:
        quantized = read(tensors, layers)
        for name, packed in quantized.items():
            tensors[f"{name}.weight"] = packed.dequantize().to(dtype)
    except ValueError as exc:
        raise ModelError(f"{path}: packed weights do not match their layout ({exc}): "
                         f"{_RECREATE}") from None
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()
             if not (k.endswith(suffixes) and k.rsplit(".", 1)[0] in quantized)}
    _load_state(path, module, state)
    return module, quantized


def _load_state(path: Path, module, state: dict[str, torch.Tensor]) -> None:
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


def _tied_names(module) -> set[str]:
    """Parameter names that share storage with an earlier one (e.g. lm_head.weight)."""
    seen, tied = set(), set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        pointer = tensor.data_ptr()
        if pointer in seen:
            tied.add(name)
        seen.add(pointer)
    return tied
