"""A sweep's `grid:` expanded into named stage lists.

    grid:
      stages:                               # slots, in recipe order
        - {method: wanda, vary: {sparsity: [0.3, 0.5]}}
        - vary: {method: [rtn, gptq], bits: [3, 4]}
          group_size: 64
        - [null, {method: distill, steps: 50}]   # alternatives; null = no stage here

A slot is a stage template or a list of alternatives (templates, or null for "no stage in
this slot"). A template is a recipe stage; its `vary:` mapping gives knobs (the method
too) a list of values each, and the template stands for every combination. The grid is
the product over slots, so the example is 2 x 4 x 2 = 16 recipes. Knobs whose own value
is a list (`bits_choices: [2, 4]`, `ignore:`) are written as in a recipe: only `vary:`
makes an axis, so there is no ambiguity.

A point's name joins its stages with "+", each stage its method followed by the knobs its
template varied (`wanda-sparsity0.5+gptq-bits4`); when two points would share a name, the
fixed knobs are added too. A combination where every slot is null is the dense model.
"""

from __future__ import annotations

import itertools
from typing import Any

from toolkit.errors import UserError

GRID_KEYS = ("stages",)
VARY = "vary"
DENSE = "dense"


def expand_grid(data: Any, where: str) -> list[tuple[str, list[dict]]]:
    """[(name, stages)] of every combination, in slot order (first slot slowest)."""
    if data is None:
        raise UserError(f"{where}: the grid is empty: give `grid: {{stages: [...]}}` at least "
                        "one stage template, or drop `grid:`")
    if not isinstance(data, dict):
        raise UserError(f"{where}: `grid:` must be a mapping with a `stages:` list")
    unknown = [key for key in data if key not in GRID_KEYS]
    if unknown:
        raise UserError(f"{where}: grid: unknown key {unknown[0]!r}: valid keys are "
                        f"{', '.join(GRID_KEYS)}")
    slots = data.get("stages")
    if not isinstance(slots, list) or not slots:
        raise UserError(f"{where}: the grid is empty: `grid: stages:` must list at least one "
                        "stage template")
    expanded = [_expand_slot(slot, f"{where}: grid slot {index}")
                for index, slot in enumerate(slots, start=1)]
    combos = list(itertools.product(*expanded))
    short = [_name(combo, full=False) for combo in combos]
    full = [_name(combo, full=True) for combo in combos]
    names = [s if short.count(s) == 1 else f for s, f in zip(short, full, strict=True)]
    return [(name, [stage for stage, _ in combo if stage is not None])
            for name, combo in zip(names, combos, strict=True)]


Choice = tuple[dict | None, dict]  # (the stage, or None; the knobs its template varied)


def _expand_slot(slot: Any, where: str) -> list[Choice]:
    alternatives = slot if isinstance(slot, list) else [slot]
    if not alternatives:
        raise UserError(f"{where}: the grid is empty: a slot lists no alternatives")
    choices: list[Choice] = []
    for alternative in alternatives:
        if alternative is None:
            choices.append((None, {}))
        elif isinstance(alternative, dict):
            choices.extend(_expand_template(alternative, where))
        else:
            raise UserError(f"{where}: {alternative!r} is not a stage: write a mapping "
                            "such as {method: rtn, bits: 4}, or null for no stage")
    return choices


def _expand_template(template: dict, where: str) -> list[Choice]:
    fixed = {key: value for key, value in template.items() if key != VARY}
    vary = template.get(VARY) or {}
    if not isinstance(vary, dict):
        raise UserError(f"{where}: `vary:` must map knobs to lists of values, e.g. "
                        "{bits: [3, 4]}")
    for key, values in vary.items():
        if not isinstance(values, list):
            raise UserError(f"{where}: vary {key}: {values!r} is not a list: write "
                            f"{key}: [{values!r}] or move it out of vary")
        if not values:
            raise UserError(f"{where}: the grid is empty: vary {key} lists no values")
        if key in fixed:
            raise UserError(f"{where}: {key} is both fixed and in vary: keep one")
    if "method" not in fixed and "method" not in vary:
        raise UserError(f"{where}: a stage template needs `method:` (fixed or under vary)")
    keys = list(vary)
    return [({**fixed, **dict(zip(keys, values, strict=True))},
             dict(zip(keys, values, strict=True)))
            for values in itertools.product(*(vary[key] for key in keys))]


def _name(combo: tuple[Choice, ...], *, full: bool) -> str:
    parts = []
    for stage, varied in combo:
        if stage is None:
            continue
        shown = stage if full else varied
        knobs = "".join(f"-{key}{_value(value)}" for key, value in shown.items()
                        if key != "method")
        parts.append(f"{stage['method']}{knobs}")
    return "+".join(parts) or DENSE


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_value(v) for v in value)
    return "none" if value is None else str(value)
