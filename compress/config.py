"""The base of every method config, and the registry that maps a config type to its handler.

A method is a dataclass holding every knob plus a handler registered against that
dataclass; `compress.apply` dispatches on `type(config)`, never on a method name string.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, ClassVar

from compress.errors import CompressError

_HANDLERS: dict[type, Callable[..., Any]] = {}
_CONFIGS_BY_NAME: dict[str, type[MethodConfig]] = {}


@dataclasses.dataclass
class MethodConfig:
    """Base for all method configs. Subclasses set `method` (the recipe name) as a ClassVar."""

    method: ClassVar[str] = ""
    # The adapter the method reaches a model through (compress/requirements.py), so a
    # caller can tell which methods apply to a model before any work: "decoder_layout"
    # (a decoder LM's blocks and linears), "residual_stream" (the same plus where each
    # block reads and writes the residual stream), "moe_groups", "channel_groups", or None for a
    # method that works on any model (distillation).
    adapter: ClassVar[str | None] = "decoder_layout"

    def to_dict(self) -> dict[str, Any]:
        """The saved form: `{"method": name, **knobs}` (tuples become lists for JSON/YAML)."""
        out: dict[str, Any] = {"method": self.method}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """Build the config named by `data["method"]`; unknown keys are an error, not ignored."""
        data = dict(data)
        name = data.pop("method", cls.method or None)
        config_type = _CONFIGS_BY_NAME.get(name) if name else None
        if config_type is None:
            known = ", ".join(sorted(_CONFIGS_BY_NAME))
            raise CompressError(f"unknown method {name!r}: choose one of {known}")
        field_names = {f.name for f in dataclasses.fields(config_type)}
        unknown = sorted(set(data) - field_names)
        if unknown:
            raise CompressError(
                f"unknown key {unknown[0]!r} for method {name!r}: "
                f"valid keys are {', '.join(sorted(field_names))}"
            )
        for f in dataclasses.fields(config_type):
            if f.name in data and isinstance(data[f.name], list):
                data[f.name] = tuple(data[f.name])
        return config_type(**data)


def register_handler(config_type: type[MethodConfig]) -> Callable:
    """Decorator: `@register_handler(WandaConfig) def handler(model, config, calib, **kw)`."""

    def decorate(handler: Callable) -> Callable:
        if config_type in _HANDLERS:
            raise RuntimeError(f"a handler for {config_type.__name__} is already registered")
        _HANDLERS[config_type] = handler
        if config_type.method:
            _CONFIGS_BY_NAME[config_type.method] = config_type
        return handler

    return decorate


def handler_for(config: MethodConfig) -> Callable:
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise CompressError(f"no handler is registered for {type(config).__name__}")
    return handler


def registered_methods() -> dict[str, type[MethodConfig]]:
    """Method name -> config type, for the CLI's choices and help."""
    return dict(sorted(_CONFIGS_BY_NAME.items()))


def ignore_patterns(value: object) -> tuple[str, ...]:
    """A config's `ignore` knob as a tuple of compiled-checked regexes over module names
    (a single string or a list from YAML/CLI is accepted)."""
    patterns = (value,) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]
    for regex in patterns:
        try:
            re.compile(regex)
        except re.error as exc:
            raise CompressError(f"--ignore {regex!r} is not a valid regex ({exc})") from None
    return patterns


def matches_any(module_name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(regex, module_name) for regex in patterns)
