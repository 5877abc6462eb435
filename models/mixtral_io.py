"""MoE LM weights on disk in the Mixtral layout (see models.mixtral_layout for the mapping).

`write_moe_lm_weights` writes config.json + model.safetensors that plain
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads as a MixtralForCausalLM,
when the model fits that layout; otherwise it keeps the toolkit's own layout (Llama config
and stacked experts) and says why. `load_mixtral_module` reads any Mixtral directory with
safetensors weights (ours, or a user's checkpoint) back into our Llama + SparseMoeBlock
model, so expert dropping and upcycle training work on it. Never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.errors import ModelError
from models.mixtral_layout import (
    MIXTRAL_MODEL_TYPE,
    dense_config_of_mixtral,
    from_mixtral_state,
    mixtral_config,
    mixtral_misfit,
    to_mixtral_state,
)
from models.safetensors_check import check_safetensors_file
from models.upcycle import install_moe_layers
from models.weights_check import check_finite_weights, check_state_matches

WEIGHTS_FILE = "model.safetensors"
MIXTRAL_LAYOUT = "mixtral"
TOOLKIT_LAYOUT = "toolkit-stacked"
# transformers' Mixtral router is not a linear, so no quantization format it reads can
# hold a quantized router, and its experts are not linears either.
PACKED_WHY = ("its quantized linears are stored packed in Edge Toolkit's own format "
              "(edge_toolkit_quantized.safetensors), which transformers does not read for a "
              "mixture-of-experts model")
PACKED_REASON = f"not saved as Mixtral because {PACKED_WHY}"


def config_model_type(directory: Path) -> str | None:
    """config.json's model_type, or None when there is no readable config."""
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8")).get(
            "model_type")
    except (OSError, ValueError, AttributeError):
        return None


def write_moe_lm_weights(module: nn.Module, directory: Path,
                         quantized: dict | None = None) -> dict[str, str]:
    """Write `module`'s config and weights into `directory`; returns the manifest note
    {"layout": "mixtral"} or {"layout": "toolkit-stacked", "layout_reason": why}.
    `quantized` (linear name -> packed weight, models.qformat) is stored packed."""
    if quantized:
        _write_packed(module, directory, quantized)
        return {"layout": TOOLKIT_LAYOUT, "layout_reason": PACKED_REASON}
    why = mixtral_misfit(module)
    if why is not None:
        module.save_pretrained(directory, safe_serialization=True)
        return {"layout": TOOLKIT_LAYOUT,
                "layout_reason": f"not saved as Mixtral because {why}"}
    mixtral_config(module).save_pretrained(directory)
    generation = getattr(module, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)
    state = dict(module.state_dict())
    head = module.get_output_embeddings()
    if head is not None and head.weight is module.get_input_embeddings().weight:
        state.pop("lm_head.weight", None)  # tied: transformers re-ties it from the config
    tensors = {k: v.detach().contiguous() for k, v in to_mixtral_state(state).items()}
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    return {"layout": MIXTRAL_LAYOUT}


def _write_packed(module: nn.Module, directory: Path, quantized: dict) -> None:
    """The toolkit layout with the quantized linears packed, in the file only Edge Toolkit
    opens (transformers would otherwise load a Llama without its experts), and a README
    saying so: nothing in the directory looks loadable to other tools."""
    from models.families.llm_weights import NOTE_FILE, untied_state
    from models.qformat import QUANT_METADATA_KEY, encode_layout, packed_state_dict
    from models.quantized_loader import EDGE_ONLY_FILE

    module.config.save_pretrained(directory)
    generation = getattr(module, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)
    state = packed_state_dict(untied_state(module), quantized)
    save_file({k: v.contiguous() for k, v in state.items()}, directory / EDGE_ONLY_FILE,
              metadata={"format": "pt",
                        QUANT_METADATA_KEY: encode_layout(quantized)})
    (directory / NOTE_FILE).write_text(
        f"# Edge Toolkit quantized mixture-of-experts model\n\nThis artifact loads in Edge "
        f"Toolkit only: {PACKED_WHY}. Load it with `models.load_model(DIR)`, evaluate it "
        f"with `toolkit eval DIR` or export it with `toolkit export`.\n", encoding="utf-8")


def load_mixtral_module(path: Path, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Our MoE decoder with the weights of the Mixtral directory `path`, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path} has no *.safetensors weights: Edge Toolkit reads Mixtral "
                         "checkpoints from safetensors only, convert or re-download them")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path / 'config.json'} is not a valid Mixtral config "
                         f"({type(exc).__name__}): restore the original config.json") from None
    if getattr(config, "model_type", None) != MIXTRAL_MODEL_TYPE:
        raise ModelError(f"{path / 'config.json'} is not a Mixtral config")
    dense, experts, top_k = dense_config_of_mixtral(config)
    if dense.num_hidden_layers < 1:
        raise ModelError(f"{path / 'config.json'} sets num_hidden_layers "
                         f"{dense.num_hidden_layers}: it must be at least 1")
    module = AutoModelForCausalLM.from_config(dense, dtype=dtype)
    install_moe_layers(module, [experts] * dense.num_hidden_layers, top_k)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        check_safetensors_file(file)
        state.update(load_file(str(file)))
    state = from_mixtral_state(state, str(path))
    if dense.tie_word_embeddings and "model.embed_tokens.weight" in state:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    check_state_matches(path, module, state)
    module.load_state_dict(state, strict=True)
    if dense.tie_word_embeddings:
        module.tie_weights()
    module.eval()
    check_finite_weights(module, str(path))
    return module
