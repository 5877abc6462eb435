"""Name the layer behind a converter's "unsupported op" message.

Converters name the failing op (`aten._linalg_det.default`, `linalg_det`) but not where
it sits in the model. torch.export records, for every node, the stack of modules that
produced it (`nn_module_stack`); the innermost module whose node calls that op is the
layer to name."""

from __future__ import annotations

import re

import torch
from torch import nn

_OP_WORDS = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _normalised(name: str) -> str:
    """aten._linalg_det.default -> linalg_det"""
    parts = [p for p in name.split(".") if p not in ("aten", "default", "Tensor", "ops")]
    return (parts[-1] if parts else name).strip("_")


def locate_op(module: nn.Module, example: tuple, message: str) -> str | None:
    """'<op> in layer <path> (<ModuleClass>)' for the first op of `message` found in the
    exported graph, or None."""
    try:
        graph = torch.export.export(module, example).graph
    except Exception:  # the model does not even trace: nothing to point at
        return None
    wanted = {_normalised(word) for word in _OP_WORDS.findall(message) if "_" in word
              or "." in word}
    for node in graph.nodes:
        if node.op != "call_function" or _normalised(str(node.target)) not in wanted:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return f"{_normalised(str(node.target))} at the model's top level"
        path, kind = list(stack.values())[-1]
        layer = path.removeprefix("L['self'].").replace("L['self']", "") or "(root)"
        kind_name = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1].strip("'>"))
        return f"{_normalised(str(node.target))} in layer {layer} ({kind_name})"
    return None
