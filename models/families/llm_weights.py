"""Writing an LLM's weights when some of its linears are quantized, so that the file
means the same weights to every reader that opens it.

When compressed-tensors can hold every quantized linear exactly
(models/qformat/compressed_tensors.py: integer codes of 2, 4 or 8 bits, any group size,
with or without zero points), `model.safetensors` is a compressed-tensors "pack-quantized"
checkpoint and config.json carries its `quantization_config`: plain
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` (with the `compressed-tensors`
package) loads the same weights Edge Toolkit does, and llm-compressor / vLLM read the format.

Otherwise (palettes, AWQ's per-input scales, 3/5/6/7-bit codes) the packed tensors go into
`EDGE_ONLY_FILE`, a name transformers never opens, and no `model.safetensors` is written:
from_pretrained then fails ("no file named model.safetensors") instead of loading random
linears with a warning, and README.md says why. Both files carry the layout in their
metadata (models/qformat/layout.py), so `models.load_model(DIR)` reads either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from models.qformat import QUANT_METADATA_KEY, QuantizedWeight, encode_layout, packed_state_dict
from models.qformat.compressed_tensors import ct_quantization_config, ct_state_dict, set_blocker
from models.qformat.layout import CT_LAYOUT_FORMAT, LAYOUT_FORMAT
from models.quantized_loader import EDGE_ONLY_FILE

WEIGHTS_FILE = "model.safetensors"
NOTE_FILE = "README.md"


def transformers_blocker(quantized: dict[str, QuantizedWeight]) -> str | None:
    """Why transformers cannot load these quantized linears exactly, or None if it can."""
    return set_blocker(quantized)


def interop_section(quantized: dict[str, QuantizedWeight]) -> dict[str, Any]:
    """The manifest's "interop" entry: which tools load the artifact, and why not."""
    reason = transformers_blocker(quantized)
    if reason is None:
        return {"transformers": True, "format": "compressed-tensors pack-quantized"}
    return {"transformers": False, "reason": reason}


def interop_summary(interop: dict[str, Any] | None) -> str | None:
    """One line for a command's summary saying which tools load the artifact."""
    if not interop:
        return None
    if interop.get("transformers"):
        return ("loads in transformers too: AutoModelForCausalLM.from_pretrained "
                "(compressed-tensors pack-quantized weights)")
    return f"this artifact loads in Edge Toolkit only: {interop.get('reason')}"


def write_quantized_weights(directory: Path, module: nn.Module,
                            quantized: dict[str, QuantizedWeight]) -> Path:
    """config.json (+ generation_config.json) and one safetensors file whose quantized
    linears are packed; tied tensors (embeddings = LM head) are stored once. Returns the
    weights file (see the module docstring for which one)."""
    module.config.save_pretrained(directory)
    generation = getattr(module, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)
    reason = transformers_blocker(quantized)
    state = untied_state(module)
    if reason is None:
        _set_quantization_config(directory / "config.json", ct_quantization_config(quantized))
        state, fmt, path = ct_state_dict(state, quantized), CT_LAYOUT_FORMAT, WEIGHTS_FILE
    else:
        _set_quantization_config(directory / "config.json", None)
        (directory / NOTE_FILE).write_text(_edge_only_note(reason), encoding="utf-8")
        state, fmt, path = packed_state_dict(state, quantized), LAYOUT_FORMAT, EDGE_ONLY_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, directory / path,
              metadata={"format": "pt", QUANT_METADATA_KEY: encode_layout(quantized, fmt)})
    return directory / path


def _set_quantization_config(config_file: Path, quantization: dict | None) -> None:
    """config.json with this `quantization_config`, or none (a config the module came
    with may name an earlier quantization that no longer describes the file)."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    if quantization is not None:
        config["quantization_config"] = quantization
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _edge_only_note(reason: str) -> str:
    return (f"# Edge Toolkit quantized model\n\nThis artifact loads in Edge Toolkit only: "
            f"{reason}. Its packed weights are in `{EDGE_ONLY_FILE}`, which "
            "`transformers.AutoModelForCausalLM.from_pretrained` does not open (it reports "
            f"no file named {WEIGHTS_FILE} rather than load random weights). Load it with "
            "`models.load_model(DIR)`, evaluate it with `toolkit eval DIR`, or export it with "
            "`toolkit export`.\n")


def untied_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor kept under its first name only, as
    transformers writes it (the loader re-ties them from the config)."""
    seen, state = set(), {}
    for name, tensor in module.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().cpu()
    return state
