"""Decide from config.json alone, before any weight is read, whether a directory is a model
Edge Toolkit can use: a decoder-only causal LM of a supported family, with sane sizes.

Why an explicit list: `AutoModelForCausalLM` accepts many configs by bolting a randomly
initialised head onto them (a BERT encoder becomes `BertLMHeadModel`), and a model the
compression engine and exporters were never tested on would produce numbers nobody can
trust. Why check values here: transformers either raises its own validation errors (not
one line), or builds nonsense silently (`num_hidden_layers: -1` gives a model with no blocks).
"""

from __future__ import annotations

import json
from pathlib import Path

from models.errors import ModelError
from models.json_file import read_json_object

# model_type -> (family name shown to users, the causal-LM class its checkpoints name).
# Each family here loads through transformers' own classes and was tested end to end
# (the fake-* registry models and the upcycled MoE); add a family only with its tests.
SUPPORTED_DECODERS: dict[str, tuple[str, str]] = {
    "llama": ("Llama", "LlamaForCausalLM"),
    "mistral": ("Mistral", "MistralForCausalLM"),
    "qwen2": ("Qwen2", "Qwen2ForCausalLM"),
    "gemma": ("Gemma", "GemmaForCausalLM"),
    "mixtral": ("Mixtral", "MixtralForCausalLM"),
}

# Keys every supported config has, as positive integers.
_REQUIRED_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads",
                   "intermediate_size", "vocab_size")
# Keys that may be absent or null (defaulted by transformers) but, when given, are sizes.
_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings",
                   "num_local_experts", "num_experts_per_tok")
# Far beyond any released model (the largest have ~126 blocks, hidden 16384, vocab 256k),
# yet small enough that building the config's skeleton cannot hang the machine.
_SIZE_CEILING = {"num_hidden_layers": 1024, "num_attention_heads": 1024,
                 "num_key_value_heads": 1024, "vocab_size": 1 << 24,
                 "max_position_embeddings": 1 << 24}
_DEFAULT_CEILING = 1 << 20


CONFIG = "config.json"
RESTORE_CONFIG = "restore the original config.json"


def supported_families() -> str:
    """"Llama, Mistral, ..." for messages."""
    return ", ".join(family for family, _ in SUPPORTED_DECODERS.values())


def read_config_json(path: Path) -> dict:
    """The parsed config.json of directory `path`, which must be a JSON object."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(
            f"{path} has no config.json: pass a Hugging Face model directory, a .gguf file "
            "or a registered name (see `toolkit models`)"
        )
    return read_json_object(config, RESTORE_CONFIG)


def check_supported_architecture(config: dict, source: str, *, named: str = CONFIG,
                                 fix: str = RESTORE_CONFIG) -> None:
    """Refuse any model_type / architectures outside SUPPORTED_DECODERS."""
    where = f"{source}: {named}"
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    described = f"model_type {json.dumps(model_type)}" + (
        f" ({', '.join(map(str, architectures))})" if isinstance(architectures, list) else "")
    if model_type not in SUPPORTED_DECODERS:
        raise ModelError(
            f"{where} describes {described}, which Edge Toolkit does not support: "
            f"pass a decoder-only causal LM of a supported family ({supported_families()})"
        )
    family, causal_lm = SUPPORTED_DECODERS[model_type]
    if not isinstance(architectures, list) or any(a != causal_lm for a in architectures):
        raise ModelError(
            f"{where} describes {described}, not a {causal_lm}: Edge Toolkit "
            f"loads {family} checkpoints with their own language-model head and never adds "
            f"an untrained one; pass the {causal_lm} checkpoint"
        )


def check_config_values(config: dict, source: str, *, named: str = CONFIG,
                        fix: str = RESTORE_CONFIG) -> None:
    """Every size is a positive integer, and the head counts divide what they split."""
    where = f"{source}: {named}"
    for key in _REQUIRED_SIZES + _OPTIONAL_SIZES:
        value = config.get(key)
        if value is None and key in _OPTIONAL_SIZES:
            continue
        if key not in config:
            raise ModelError(f"{where} lacks {key!r}: {fix}")
        ceiling = _SIZE_CEILING.get(key, _DEFAULT_CEILING)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= ceiling:
            raise ModelError(f"{where} has {key} = {json.dumps(value)}, which must "
                             f"be an integer from 1 to {ceiling}: {fix}")
    _check_divides(config, where, fix, "num_attention_heads", "hidden_size")
    if config.get("num_key_value_heads") is not None:
        _check_divides(config, where, fix, "num_key_value_heads", "num_attention_heads")
    experts, per_token = config.get("num_local_experts"), config.get("num_experts_per_tok")
    if experts and per_token and per_token > experts:
        raise ModelError(f"{where} has num_experts_per_tok = {per_token}, more "
                         f"than num_local_experts = {experts}: {fix}")


def _check_divides(config: dict, where: str, fix: str, divisor: str, total: str) -> None:
    if config[total] % config[divisor]:
        raise ModelError(f"{where} has {total} = {config[total]}, not divisible "
                         f"by {divisor} = {config[divisor]}: {fix}")


def checked_hf_config(path: Path):
    """The transformers config of directory `path`, after every check above."""
    from transformers import AutoConfig

    raw = read_config_json(path)
    check_supported_architecture(raw, str(path))
    check_config_values(raw, str(path))
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - transformers' validators raise many types
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else ""
        raise ModelError(f"{path / 'config.json'} is rejected by transformers "
                         f"({type(exc).__name__}: {first[:200]}): restore the original "
                         "config.json") from None
