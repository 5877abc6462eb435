"""Mixed bit-width allocation: which layers get more bits under an average-size budget.

    minimize  sum_l s_l(b_l)   subject to   sum_l n_l * q_l(b_l) <= target * sum_l n_l

with s_l(b) the layer's output error at b bits on the calibration tokens,
s_l(b) = tr(dW_b H dW_b^T) / n_tokens (dW_b = W - W_hat_b, H = sum_t x_t x_t^T), and
q_l(b) its stored bits per weight, tables (palettes) or group scales and zero points
(integer grids) included. Apple's on-device model mixes 2- and 4-bit palettized layers
for about 3.5-3.7 bits per weight (arXiv 2407.21075).
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from compress.errors import CompressError

# A layer: (name, number of weights, {bits: (sensitivity, stored bits per weight)}).
LayerChoices = tuple[str, int, dict[int, tuple[float, float]]]
# The allocation may fall this far below the target before it is reported as missed.
TOLERANCE_BITS = 0.05


def output_error(weight: torch.Tensor, dequantized: torch.Tensor, hessian: torch.Tensor,
                 n_tokens: int) -> float:
    """tr(dW H dW^T) / n_tokens with dW = W - W_hat, H = sum_t x_t x_t^T: the squared
    error the quantized layer adds to its outputs, per calibration token (GPTQ's layer
    objective, arXiv 2210.17323)."""
    delta = weight.float() - dequantized.float()
    return float(((delta @ hessian.float()) * delta).sum()) / max(n_tokens, 1)


def average_bits(layers: list[LayerChoices], allocation: dict[str, int]) -> float:
    """Stored bits per weight of `allocation`, weighted by each layer's size."""
    total = sum(numel for _, numel, _ in layers)
    used = sum(numel * options[allocation[name]][1] for name, numel, options in layers)
    return used / total if total else 0.0


def layer_type(name: str) -> str:
    """The linear's name inside its block: "model.layers.3.mlp.down_proj" -> "mlp.down_proj"."""
    return re.sub(r"^.*?\.\d+\.", "", name)


def allocation_by_type(layer_bits: dict[str, int]) -> dict[str, dict[str, int]]:
    """How many layers of each type got each width, e.g. {"mlp.down_proj": {"2": 3, "4": 27}}
    (string keys: the form JSON keeps)."""
    counts: dict[str, Counter] = {}
    for name, bits in layer_bits.items():
        counts.setdefault(layer_type(name), Counter())[bits] += 1
    return {kind: {str(b): n for b, n in sorted(c.items())} for kind, c in sorted(counts.items())}


def allocate_bits(layers: list[LayerChoices], target: float,
                  tolerance: float = TOLERANCE_BITS) -> dict[str, int]:
    """Bits per layer minimizing the summed sensitivity within `target` average bits.

    Greedy for this multiple-choice knapsack: start every layer at its cheapest choice,
    then repeatedly take the upgrade with the largest sensitivity decrease per added
    stored bit among those that still fit the budget (one that does not fit is skipped,
    smaller ones may still fit). Exact solutions are NP-hard in general, but the greedy
    loses at most one upgrade's worth against the LP optimum, which is small when every
    layer is a small part of the model (~200 linears in a 3B decoder). Upgrades that buy
    nothing are still taken last: the target is the size the user asked for. Ending more
    than `tolerance` bits below the target is an error that names the gap and the fix."""
    if not layers:
        return {}
    total = sum(numel for _, numel, _ in layers)
    choice = {name: min(options, key=lambda b, o=options: (o[b][1], b))
              for name, _, options in layers}
    floor = average_bits(layers, choice)
    if floor > target + 1e-9:
        smallest = min(min(options) for _, _, options in layers)
        raise CompressError(f"target {target:g} bits is below the smallest choice ({smallest} "
                            f"bits, {floor:.3f} stored with its scales or tables): raise "
                            "target_bits "
                            "or add a smaller choice")
    room = (target - floor) * total
    while (upgrade := _best_upgrade(layers, choice, room)) is not None:
        name, bits, added = upgrade
        choice[name] = bits
        room -= added
    _check_reached(layers, choice, target, tolerance)
    return choice


def _best_upgrade(layers: list[LayerChoices], choice: dict[str, int],
                  room: float) -> tuple[str, int, float] | None:
    """(layer, new bits, added stored bits) of the most sensitivity saved per added bit
    among the upgrades that fit in `room` stored bits; None when none fits."""
    best, best_ratio = None, float("-inf")
    slack = 1e-9 * max(room, 1.0)  # float sums must not reject an exact fit
    for name, numel, options in layers:
        sensitivity, stored = options[choice[name]]
        for bits, (new_sensitivity, new_stored) in options.items():
            added = numel * (new_stored - stored)
            if added <= 0 or added > room + slack:
                continue
            ratio = (sensitivity - new_sensitivity) / added
            if ratio > best_ratio:
                best, best_ratio = (name, bits, added), ratio
    return best


def _check_reached(layers: list[LayerChoices], choice: dict[str, int], target: float,
                   tolerance: float) -> None:
    achieved = average_bits(layers, choice)
    if achieved >= target - tolerance:
        return
    at_largest = all(choice[name] == max(options, key=lambda b, o=options: o[b][1])
                     for name, _, options in layers)
    if at_largest:
        raise CompressError(f"target {target:g} bits is above the largest choice: every layer "
                            f"at its largest stores only {achieved:.3f} bits per weight; "
                            "lower target_bits or add a larger choice")
    raise CompressError(
        f"mixed bits reached only {achieved:.3f} bits per weight, {target - achieved:.2f} "
        f"below target {target:g}: the {len(layers)} quantized layers are too few to split "
        f"the budget that finely; set target_bits to {achieved:.2f}, add an in-between bit "
        "width to bits_choices, or quantize more layers")
