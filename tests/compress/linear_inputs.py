"""What the mixed-bit tests share: random calibration ids for the fake Llama, and every
block linear's inputs on a model, gathered with plain forward hooks (independent of the
toolkit's own calibration engine)."""

from __future__ import annotations

import torch


def random_calib(n: int = 4, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 259, (n, length), generator=torch.Generator().manual_seed(seed))


def block_linear_inputs(model: torch.nn.Module, calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """{linear name: its inputs [tokens, in_features]} for every linear in a block."""
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args, n=name: seen.setdefault(n, []).append(
                    args[0].reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    for hook in hooks:
        hook.remove()
    return {n: torch.cat(x) for n, x in seen.items()}
