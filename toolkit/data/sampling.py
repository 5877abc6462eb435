"""Deterministic subsets spread over groups (analogy sections, MMLU subjects).

A quick run of the knowledge suite (`--kick-questions N`) must still touch every kind of
question, and two runs with the same N and seed must ask the same questions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def spread_sample(items: Sequence[T], group: Callable[[T], str], count: int | None,
                  seed: int) -> list[T]:
    """Up to `count` of `items`, taken round-robin over their groups.

    The groups' visiting order and the order inside each group are shuffled with
    `random.Random(seed)`; items are then taken one per group per round until `count`
    are picked, so group sizes differ by at most one where the groups allow. The result
    keeps the input order. `count=None` (or `count >= len(items)`) keeps every item.
    """
    if count is None or count >= len(items):
        return list(items)
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(group(item), []).append(index)
    order = list(groups.values())
    rng.shuffle(order)
    for members in order:
        rng.shuffle(members)
    picked: list[int] = []
    depth = 0
    while len(picked) < count:
        for members in order:
            if depth < len(members) and len(picked) < count:
                picked.append(members[depth])
        depth += 1
    return [items[i] for i in sorted(picked)]
