"""The Hugging Face KV-cache argument across transformers versions: 5.2x names it `cache`
(in and out), earlier versions `past_key_values`."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def returned_cache(out: Any) -> Any:
    """The KV cache a forward returned."""
    return out.get("cache") if "cache" in out else out.get("past_key_values")


def cache_kwargs(model: nn.Module, cache: Any) -> dict:
    """The keyword that passes `cache` back into `model`'s forward."""
    parameters = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in parameters else {"past_key_values": cache}
