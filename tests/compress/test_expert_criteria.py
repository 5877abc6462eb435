"""Expert-dropping criteria against hand computations on hand-built routing statistics."""

from __future__ import annotations

import functools
import math
from collections import Counter

import pytest
import torch

from compress.errors import CompressError
from compress.experts import (
    CRITERIA,
    ExpertStats,
    best_subset_by_reconstruction,
    experts_to_keep,
    iterative_schedule,
    random_scores,
)


def _f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# E = 4, k = 2, T = 4 units. Expert 0 is in every unit with small outputs, expert 1 in
# three, expert 2 in ONE unit with a large output (10), expert 3 in none.
ROUTED = dict(
    chosen=torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0]]),
    gates=torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5], [0.8, 0.2]]),
    expert_output_norms=torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 10.0], [2.0, 1.0]]),
)


def test_criteria_registry_names() -> None:
    assert set(CRITERIA) == {"frequency", "routing-weight", "router-norm", "activation-norm",
                             "gradient-entropy", "weight-norm", "random"}


def test_frequency_counts_units_over_both_slots() -> None:
    chosen = torch.tensor([[0, 1], [1, 2], [1, 0], [3, 1], [0, 3]])  # T = 5, k = 2
    scores = CRITERIA["frequency"](ExpertStats(num_experts=4, chosen=chosen))
    # units with e in either slot: e0 {0,2,4}, e1 {0,1,2,3}, e2 {1}, e3 {3,4}
    torch.testing.assert_close(scores, _f64([3 / 5, 4 / 5, 1 / 5, 2 / 5]))
    assert float(scores.sum()) == pytest.approx(2.0)  # k choices per unit


def test_routing_weight_and_activation_norm_rank_rare_large_expert_first() -> None:
    stats = ExpertStats(num_experts=4, **ROUTED)
    frequency = CRITERIA["frequency"](stats)
    routing = CRITERIA["routing-weight"](stats)
    activation = CRITERIA["activation-norm"](stats)
    # mean over the units routed to e of gate * norm (expert 0 sits in slot 1 of unit 3)
    torch.testing.assert_close(routing, _f64([(0.6 * 1 + 0.7 * 1 + 0.5 * 1 + 0.2 * 1) / 4,
                                              (0.4 * 2 + 0.3 * 2 + 0.8 * 2) / 3,
                                              0.5 * 10 / 1, 0.0]))
    torch.testing.assert_close(activation, _f64([(1 + 1 + 1 + 1) / 4, (2 + 2 + 2) / 3, 10.0,
                                                 0.0]))
    torch.testing.assert_close(frequency, _f64([4 / 4, 3 / 4, 1 / 4, 0.0]))
    # frequency ranks 0 > 1 > 2; output-aware criteria rank the rare large expert 2 first
    assert frequency.argsort(descending=True).tolist() == [0, 1, 2, 3]
    assert routing.argsort(descending=True).tolist() == [2, 1, 0, 3]
    assert activation.argsort(descending=True).tolist() == [2, 1, 0, 3]
    assert experts_to_keep(frequency, 2) == [0, 1]
    assert experts_to_keep(routing, 2) == [1, 2]


def test_never_chosen_experts_score_zero() -> None:
    stats = ExpertStats(num_experts=6, **ROUTED)  # experts 3, 4, 5 never chosen
    for name in ("frequency", "routing-weight", "activation-norm"):
        scores = CRITERIA[name](stats)
        assert scores.shape == (6,)
        assert scores[3:].tolist() == [0.0, 0.0, 0.0], name
        assert bool((scores[:3] > 0).all()), name


def test_router_norm_against_hand_values_and_linalg() -> None:
    router = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0], [-6.0, 8.0]])
    scores = CRITERIA["router-norm"](ExpertStats(num_experts=4, router_weight=router))
    torch.testing.assert_close(scores, _f64([5.0, 1.0, 0.0, 10.0]))
    torch.testing.assert_close(scores, torch.linalg.norm(router.double(), dim=1))


def test_weight_norm_covers_every_tensor_of_the_expert() -> None:
    fc1 = torch.tensor([[[1.0, 2.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]])  # [E=2, 2, 2]
    bias = torch.tensor([[0.0, 4.0], [0.0, 4.0]])  # [E=2, 2]
    scores = CRITERIA["weight-norm"](ExpertStats(num_experts=2, expert_weights=[fc1, bias]))
    # e0: 1 + 4 + 4 + 0 + 0 + 16 = 25; e1: 9 + 16 = 25 -> both 5; with the bias alone 4
    torch.testing.assert_close(scores, _f64([5.0, 5.0]))
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, generator=gen),
               torch.randn(3, 4, 5, generator=gen)]
    scores = CRITERIA["weight-norm"](ExpertStats(num_experts=3, expert_weights=weights))
    expected = [float(torch.linalg.norm(torch.cat([w[e].flatten() for w in weights]).double()))
                for e in range(3)]
    torch.testing.assert_close(scores, _f64(expected))


def test_gradient_entropy_uniform_beats_peaked() -> None:
    grads = torch.tensor([[-2.0, 2.0, -2.0, 2.0],  # uniform magnitudes: ln 4
                          [5.0, 0.0, 0.0, 0.0],  # all in one weight: 0
                          [3.0, -1.0, 0.0, 0.0],  # p = (3/4, 1/4)
                          [0.0, 0.0, 0.0, 0.0]])  # no gradient (never routed): 0
    scores = CRITERIA["gradient-entropy"](ExpertStats(num_experts=4, expert_grads=grads))
    partial = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    torch.testing.assert_close(scores, _f64([math.log(4), 0.0, partial, 0.0]))
    assert experts_to_keep(scores, 2) == [0, 2]


def test_random_is_reproducible_and_seed_dependent() -> None:
    stats = ExpertStats(num_experts=16, seed=3)
    first, again = CRITERIA["random"](stats), CRITERIA["random"](ExpertStats(16, seed=3))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, CRITERIA["random"](ExpertStats(16, seed=4)))
    # a seed fixed with partial overrides the stats field
    torch.testing.assert_close(functools.partial(random_scores, seed=4)(stats),
                               CRITERIA["random"](ExpertStats(16, seed=4)))
    assert first.shape == (16,) and bool(((first >= 0) & (first < 1)).all())


def test_experts_to_keep_breaks_ties_towards_lower_index() -> None:
    # one clear winner (1), then a three-way tie at 1.0 for two places: 0 and 2 win over 3
    assert experts_to_keep(torch.tensor([1.0, 2.0, 1.0, 1.0, 0.0]), 2) == [0, 1, 2]
    assert experts_to_keep(torch.tensor([0.5, 0.5, 0.5, 0.5]), 3) == [0]
    assert experts_to_keep(torch.tensor([0.1, 0.9, 0.4]), 0) == [0, 1, 2]
    assert experts_to_keep(torch.tensor([0.1, 0.9, 0.4]), 1) == [1, 2]  # sorted ascending
    with pytest.raises(CompressError):
        experts_to_keep(torch.tensor([0.1, 0.9]), 2)  # nothing would be left


def test_iterative_schedule() -> None:
    assert iterative_schedule(10, 7, 3) == [3, 2, 2]
    assert iterative_schedule(8, 4, 4) == [1, 1, 1, 1]
    assert iterative_schedule(8, 5, 1) == [5]  # one round is one-shot
    for experts, drop, rounds in [(10, 7, 3), (64, 32, 5), (10, 9, 9), (4, 3, 2)]:
        schedule = iterative_schedule(experts, drop, rounds)
        assert sum(schedule) == drop and len(schedule) == rounds
        assert max(schedule) - min(schedule) <= 1
    with pytest.raises(CompressError):
        iterative_schedule(8, 2, 3)  # a round would drop nothing
    with pytest.raises(CompressError):
        iterative_schedule(4, 4, 1)  # would drop every expert


def test_stats_reject_bad_shapes_and_missing_fields() -> None:
    with pytest.raises(CompressError, match="gates"):
        ExpertStats(num_experts=4, chosen=ROUTED["chosen"], gates=torch.ones(4, 3))
    with pytest.raises(CompressError, match="repeats"):
        ExpertStats(num_experts=4, chosen=torch.tensor([[1, 1]]))
    with pytest.raises(CompressError, match="outside"):
        ExpertStats(num_experts=2, chosen=ROUTED["chosen"])
    with pytest.raises(CompressError, match="expert_output_norms"):
        CRITERIA["routing-weight"](ExpertStats(num_experts=4, chosen=ROUTED["chosen"],
                                               gates=ROUTED["gates"]))


# Toy top-1 layer for NAEE: unit t goes to the allowed expert with the highest logit and
# outputs F[t, e]. Expert 3 computes exactly what expert 1 does (a duplicate), and every
# unit that prefers 3 has 1 as its runner-up; expert 4 is never chosen.
LOGITS = torch.tensor([[3.0, 1.0, 0.0, 2.0, -1.0],  # -> 0; without 0 it goes to 3 (= f1)
                       [0.0, 2.0, 1.0, 3.0, -1.0],  # -> 3; without 3 it goes to 1: same
                       [2.0, 3.0, 0.0, 1.0, -1.0],  # -> 1; without 1 it goes to 0
                       [0.0, 1.0, 3.0, 2.0, -1.0]])  # -> 2; without 2 it goes to 3 (= f1)


def _toy_layer(calls: list[list[int]]):
    units = LOGITS.shape[0]
    outputs = torch.stack([torch.tensor([[float(e), float(t)] for e in (0, 1, 2, 1, 4)])
                           for t in range(units)])  # F[t, e] = (id of e's function, t)

    def layer_outputs(subset: list[int]) -> torch.Tensor:
        calls.append(list(subset))
        allowed = torch.full((5,), float("-inf"))
        allowed[subset] = 0.0
        choice = (LOGITS + allowed).argmax(dim=1)
        return outputs[torch.arange(units), choice]

    return layer_outputs


def _error(subset: list[int]) -> float:
    layer = _toy_layer([])
    return float((layer(subset) - layer([0, 1, 2, 3, 4])).square().sum())


def test_reconstruction_finds_the_redundant_experts_exhaustive_and_greedy() -> None:
    # by hand: dropping {3, 4} changes no unit's output; any other pair moves a unit to a
    # different function (e.g. dropping 1 sends unit 2 to expert 0: error (1 - 0)^2 = 1)
    assert _error([0, 1, 2]) == 0.0
    assert _error([0, 2, 3]) == 1.0 and _error([1, 2, 3]) == 1.0
    exhaustive_calls: list[list[int]] = []
    assert best_subset_by_reconstruction(_toy_layer(exhaustive_calls), 5, 3) == [0, 1, 2]
    assert Counter(len(s) for s in exhaustive_calls) == {5: 1, 3: math.comb(5, 3)}
    assert exhaustive_calls[0] == [0, 1, 2, 3, 4]  # the reference is the full set

    greedy_calls: list[list[int]] = []
    found = best_subset_by_reconstruction(_toy_layer(greedy_calls), 5, 3, exhaustive_limit=0)
    assert found == [0, 1, 2]
    # greedy: the reference, 5 single removals, then 4 removals from the 4 left
    assert Counter(len(s) for s in greedy_calls) == {5: 1, 4: 5, 3: 4}
    assert best_subset_by_reconstruction(_toy_layer([]), 5, 5) == [0, 1, 2, 3, 4]
