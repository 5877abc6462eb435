"""Loading a mixture-of-experts language model artifact (sparsely upcycled, possibly with
experts dropped): a Hugging Face directory (config.json, tokenizer, *.safetensors) whose
toolkit.json says "family": "moe-llm" and records the MoE shape,
{"moe": {"num_experts": E, "top_k": k, "layers": [experts in each layer]}}.

A directory in transformers' Mixtral layout (what the toolkit writes when the model fits
it, or a user's Mixtral checkpoint, with or without toolkit.json) is read by
`models.mixtral_io`; toolkit.json's recorded shape, when present, must agree with it.
In the toolkit's own layout (a Llama config and stacked experts), the dense config
builds the decoder, `models.upcycle.install_moe_layers` gives it one MoE layer per layer
with the recorded expert count, and the safetensors weights are loaded strictly (only the
LM head may be missing, when it is tied to the embeddings).
Never unpickles."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from models.errors import ModelError
from models.hf_loader import load_tokenizer
from models.mixtral_io import config_model_type, load_mixtral_module
from models.mixtral_layout import MIXTRAL_MODEL_TYPE
from models.qformat import quantized_from_state
from models.quantized_loader import quantization_layout
from models.registry import LoadedModel
from models.safetensors_check import check_safetensors_file
from models.upcycle import install_moe_layers
from models.weights_check import check_finite_weights

FAMILY = "moe-llm"


def load_moe_lm_directory(path: Path, recorded: tuple[list[int], int] | None, *,
                          dtype: torch.dtype = torch.float32) -> LoadedModel:
    """`recorded`: (experts per layer, top_k) from the manifest's checked "moe" section
    (the family parses it), or None for a Mixtral checkpoint without toolkit.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if config_model_type(path) == MIXTRAL_MODEL_TYPE:
        return _load_mixtral_directory(path, recorded, dtype)
    if recorded is None:
        raise ModelError(f"{path} has no toolkit.json recording its MoE shape: re-create "
                         "the artifact with `toolkit train upcycle`")
    layers, top_k = recorded
    files = sorted(path.glob("*.safetensors"))
    if not (path / "config.json").is_file() or not files:
        raise ModelError(f"{path} lacks config.json or *.safetensors weights: the artifact "
                         "is incomplete, re-create it")
    try:
        config = AutoConfig.from_pretrained(path)
        module = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path / 'config.json'} does not describe a decoder model "
                         f"({type(exc).__name__}): re-create the artifact") from None
    install_moe_layers(module, layers, top_k)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        check_safetensors_file(file)
        state.update(load_file(str(file)))
    state, quantized = _unpacked(path, files, state, dtype)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        first = str(exc).strip().splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise ModelError(f"{path} does not match its recorded MoE shape ({first}): "
                         "re-create the artifact") from None
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"{path} does not match its recorded MoE shape (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}): re-create the artifact")
    if tied:
        module.tie_weights()
    module.eval()
    check_finite_weights(module, str(path))
    return LoadedModel(module=module, tokenizer=load_tokenizer(path), source=str(path),
                       quantized=quantized)


def _unpacked(path: Path, files: list[Path], state: dict[str, torch.Tensor],
              dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The state with every packed linear (models.mixtral_io writes quantized MoE LMs
    packed) replaced by its dequantized weight, and the packed weights (None if none)."""
    layout = quantization_layout(files)
    if layout is None:
        return state, None
    try:
        quantized = quantized_from_state(state, layout[1])
    except ValueError as exc:
        raise ModelError(f"{path}: packed weights do not match their layout ({exc}): "
                         "re-create the artifact") from None
    packed = {k for k in state if k.rsplit(".", 1)[0] in quantized}
    state = {k: v for k, v in state.items() if k not in packed}
    state.update({f"{name}.weight": weight.dequantize().to(dtype)
                  for name, weight in quantized.items()})
    return state, quantized


def _load_mixtral_directory(path: Path, recorded: tuple[list[int], int] | None,
                            dtype: torch.dtype) -> LoadedModel:
    module = load_mixtral_module(path, dtype=dtype)
    if recorded is not None:
        layers, top_k = recorded
        found = [layer.mlp.num_experts for layer in module.model.layers]
        found_k = module.model.layers[0].mlp.top_k
        if layers != found or top_k != found_k:
            raise ModelError(f"{path / 'toolkit.json'} records {layers} experts per layer "
                             f"(top_k {top_k}) but config.json has {found} (top_k "
                             f"{found_k}): re-create the artifact")
    return LoadedModel(module=module, tokenizer=load_tokenizer(path), source=str(path))
