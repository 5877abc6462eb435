"""Values a command accepts only within the range the libraries and the model can honour.

Seeds feed `torch.manual_seed`, `torch.Generator.manual_seed` and `numpy.random.default_rng`,
sometimes with a small offset added (a held-out split uses seed + 1): torch refuses values
beyond 64 bits and numpy refuses negatives, so a seed is an integer in [0, 2**63 - 1].

A sequence length beyond the model's context (`config.max_position_embeddings`) would run
positions the model never learned (RoPE tables stop there, learned position embeddings
raise an index error deep inside a forward pass), so calibration and evaluation lengths are
refused before the model does any work.
"""

from __future__ import annotations

import argparse
from typing import Any

from toolkit.errors import UserError

MAX_SEED = 2**63 - 1


def seed_error(value: int) -> str | None:
    """Why `value` is not a usable seed, or None when it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{value!r} is not an integer"
    if not 0 <= value <= MAX_SEED:
        return f"{value} is outside 0..{MAX_SEED} (2**63 - 1)"
    return None


def seed_arg(text: str) -> int:
    """argparse type for every `--seed`: an integer in [0, 2**63 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    reason = seed_error(value)
    if reason:
        raise argparse.ArgumentTypeError(f"{reason}: pick a smaller non-negative seed")
    return value


def check_seed(value: int, name: str = "--seed") -> None:
    """UserError naming `name` when `value` is not a usable seed."""
    reason = seed_error(value)
    if reason:
        raise UserError(f"{name} {reason}: pick a non-negative seed below 2**63")


def model_context(model: Any) -> int | None:
    """The longest sequence the model takes, from its config; None when it does not say
    (vision models, configs without `max_position_embeddings`)."""
    module = getattr(model, "module", model)
    config = getattr(module, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def check_length(model: Any, seq_len: int | None, what: str) -> None:
    """UserError when `seq_len` tokens exceed the model's context."""
    context = model_context(model)
    if seq_len is None or context is None or seq_len <= context:
        return
    raise UserError(f"{what} {seq_len} is longer than the model's context of {context} "
                    f"tokens (config.max_position_embeddings): pass {what} {context} or less")


def check_lengths(model: Any, recipe: Any) -> None:
    """Refuse a recipe whose calibration or evaluation windows exceed the model's context.

    `model` is a LoadedModel or a module with a transformers config; `recipe` has
    `.calibration.seq_len` and `.protocol.seq_len` (toolkit.recipe.Recipe). Call it right
    after the model is loaded, before calibration data is sampled."""
    calibration = getattr(recipe, "calibration", None)
    check_length(model, getattr(calibration, "seq_len", None), "--seq-len")
    protocol = getattr(recipe, "protocol", None)
    check_length(model, getattr(protocol, "seq_len", None), "--eval-seq-len")
