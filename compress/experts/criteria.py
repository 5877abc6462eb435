"""Expert importance for expert dropping: score_e per expert, higher = more important = keep.

MC-Suite (Jaiswal et al., arXiv 2504.05586) scores every expert of a MoE layer, drops the
r least important, deletes their router rows, and drops the same r in every layer. Each
criterion here is a pure function `ExpertStats -> Tensor[E]` over what calibration
collected for ONE MoE layer, so a test can call it on hand-made tensors; the hooks that
collect the statistics and the model surgery (`models.vmoe.drop_experts`) live elsewhere.

With T routed units t (tokens for a token-routed MoE, images for a per-image MoE such as
Mobile V-MoE), chosen experts c[t, j] (j < k), gates g[t, j] and expert output norms
n[t, j] = ||f_{c[t, j]}(x_t)||_2, and T_e = {t : e in c[t, :]}:

    frequency        |T_e| / T                                       (MC-Suite EUF)
    routing-weight   (1 / |T_e|) sum_{t in T_e} g_{t,e} ||f_e(x_t)||_2  (REAP saliency)
    activation-norm  (1 / |T_e|) sum_{t in T_e} ||f_e(x_t)||_2        (MC-Suite EAN)
    router-norm      ||W_router[e, :]||_2                            (MC-Suite RWN)
    gradient-entropy -sum_i p_ei log p_ei,  p_ei = |G_ei| / sum_i |G_ei|  (MC-Suite EGE)
    weight-norm      sqrt(sum_W ||W[e]||_F^2) over all of expert e's tensors  (MC-Suite EWN)
    random           U(0, 1) from a seeded generator (the control)

The three routed criteria give 0 to an expert no unit chose: calibration saw no evidence
that it matters, so it goes first. NAEE (Lu et al., arXiv 2402.14800) is not a per-expert
score but a subset search: `best_subset_by_reconstruction`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import torch

from compress.errors import CompressError

# NAEE enumerates every subset (Mixtral: C(8, 4) = 70 layer runs); past this many the
# calibration forward passes dominate, so the search turns greedy.
EXHAUSTIVE_LIMIT = 5000


@dataclasses.dataclass
class ExpertStats:
    """What calibration collected for one MoE layer with `num_experts` experts.

    Every field but `num_experts` is optional, because each criterion needs only some:
    the weight-only ones (router-norm, weight-norm) run without any calibration data.
    A criterion whose field is missing raises CompressError naming it.
    """

    num_experts: int
    # [T, E] softmax of the router logits of each routed unit (kept for criteria that read
    # the whole distribution; the routed criteria below read only `chosen`/`gates`).
    router_probs: torch.Tensor | None = None
    # [T, k] int64 experts each unit was routed to; a row never repeats an expert (top-k).
    chosen: torch.Tensor | None = None
    # [T, k] combine weights of the chosen experts (after any renormalisation the layer does).
    gates: torch.Tensor | None = None
    # [T, k] ||f_e(x_t)||_2 of the chosen expert's output, before the gate multiplies it.
    expert_output_norms: torch.Tensor | None = None
    # [E, P] per-expert gradient of the calibration loss w.r.t. the expert's flattened
    # weights (or a fixed subset of P of them), e.g. accumulated over batches; only the
    # magnitudes are used.
    expert_grads: torch.Tensor | None = None
    # [E, D] router rows: row e produces expert e's logit (nn.Linear(D, E).weight).
    router_weight: torch.Tensor | None = None
    # Every tensor of the stacked experts, each [E, ...] (fc1/fc2 weights and biases).
    expert_weights: Sequence[torch.Tensor] = ()
    # Seed of the `random` control; give each layer its own (e.g. base + layer index) so
    # the layers do not all drop the same expert ids.
    seed: int = 0

    def __post_init__(self) -> None:
        e = self.num_experts
        if e < 1:
            raise CompressError(f"ExpertStats.num_experts must be >= 1, got {e}")
        if self.chosen is not None:
            self._check_routing()
        if self.router_probs is not None:
            units = None if self.chosen is None else self.chosen.shape[0]
            if self.router_probs.dim() != 2 or self.router_probs.shape[1] != e or (
                    units is not None and self.router_probs.shape[0] != units):
                raise CompressError(f"router_probs has shape {tuple(self.router_probs.shape)}, "
                                    f"expected [T, {e}] with T = the rows of chosen")
        for name in ("expert_grads", "router_weight"):
            value = getattr(self, name)
            if value is not None and (value.dim() != 2 or value.shape[0] != e):
                raise CompressError(f"{name} has shape {tuple(value.shape)}, expected "
                                    f"[{e}, ...] (one row per expert)")
        for i, weight in enumerate(self.expert_weights):
            if weight.dim() < 1 or weight.shape[0] != e:
                raise CompressError(f"expert_weights[{i}] has shape {tuple(weight.shape)}; "
                                    f"stacked expert tensors must be [{e}, ...]")

    def _check_routing(self) -> None:
        chosen, e = self.chosen, self.num_experts
        if chosen.dim() != 2 or chosen.shape[0] == 0 or chosen.shape[1] == 0:
            raise CompressError(f"chosen has shape {tuple(chosen.shape)}, expected [T, k] "
                                "with T >= 1 calibration units")
        if chosen.dtype.is_floating_point or chosen.dtype == torch.bool:
            raise CompressError(f"chosen must hold integer expert ids, got {chosen.dtype}")
        if int(chosen.min()) < 0 or int(chosen.max()) >= e:
            raise CompressError(f"chosen holds expert ids outside 0..{e - 1}")
        ordered = chosen.sort(dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            # A repeated id would count the unit twice in the sums but once in |T_e|.
            raise CompressError("a row of chosen repeats an expert; top-k picks distinct ones")
        for name in ("gates", "expert_output_norms"):
            value = getattr(self, name)
            if value is not None and value.shape != chosen.shape:
                raise CompressError(f"{name} has shape {tuple(value.shape)}, chosen has "
                                    f"{tuple(chosen.shape)}: one value per chosen slot")


def _require(stats: ExpertStats, criterion: str, *fields: str) -> None:
    missing = [f for f in fields if getattr(stats, f) is None]
    if missing:
        raise CompressError(f"criterion '{criterion}' needs ExpertStats.{', '.join(missing)}; "
                            "collect it during calibration or pick another criterion")


def _units_per_expert(stats: ExpertStats) -> torch.Tensor:
    """|T_e| as float64 [E]: rows never repeat an expert, so slot counts are unit counts."""
    chosen = stats.chosen.long().flatten()
    return torch.bincount(chosen, minlength=stats.num_experts).to(torch.float64)


def _mean_over_routed(stats: ExpertStats, values: torch.Tensor) -> torch.Tensor:
    """(1 / |T_e|) sum over the slots that chose e of `values` [T, k]; 0 when |T_e| = 0."""
    total = torch.zeros(stats.num_experts, dtype=torch.float64, device=values.device)
    total.index_add_(0, stats.chosen.long().flatten().to(values.device),
                     values.detach().to(torch.float64).flatten())
    count = _units_per_expert(stats).to(values.device)
    return total / count.clamp(min=1.0)


def frequency_scores(stats: ExpertStats) -> torch.Tensor:
    """freq_e = |T_e| / T: the fraction of routed units whose k choices include e
    (MC-Suite EUF, arXiv 2504.05586). Over all experts the scores sum to k."""
    _require(stats, "frequency", "chosen")
    return _units_per_expert(stats) / stats.chosen.shape[0]


def routing_weight_scores(stats: ExpertStats) -> torch.Tensor:
    """S_e = (1 / |T_e|) sum_{t in T_e} g_{t,e} * ||f_e(x_t)||_2, 0 if |T_e| = 0.

    REAP's router-weighted expert activation saliency, as summarised in MC-Suite's
    related work (arXiv 2504.05586; PAPERS.md: "saliency = mean(gate * ||expert output||)").
    It is a mean over the units routed to e, not over all T: a rarely chosen expert that
    writes large, strongly gated outputs scores high, which frequency would miss.
    """
    _require(stats, "routing-weight", "chosen", "gates", "expert_output_norms")
    return _mean_over_routed(stats, stats.gates * stats.expert_output_norms)


def activation_norm_scores(stats: ExpertStats) -> torch.Tensor:
    """EAN_e = (1 / |T_e|) sum_{t in T_e} ||f_e(x_t)||_2, 0 if |T_e| = 0.

    MC-Suite's expert activation norm (arXiv 2504.05586), its best criterion as Min-EAN:
    drop the experts with the smallest EAN, i.e. keep the highest scores here. The gate is
    left out on purpose: that is what separates it from routing-weight.
    """
    _require(stats, "activation-norm", "chosen", "expert_output_norms")
    return _mean_over_routed(stats, stats.expert_output_norms)


def router_norm_scores(stats: ExpertStats) -> torch.Tensor:
    """RWN_e = ||W_router[e, :]||_2, the norm of the router weights that produce e's logit
    (MC-Suite RWN, arXiv 2504.05586). Weight-only: needs no calibration data.

    Direction: a larger norm scores higher (kept). MC-Suite evaluates both Min-RWN and
    Max-RWN (drop the smallest / the largest norm); negate these scores for the latter.
    """
    _require(stats, "router-norm", "router_weight")
    return torch.linalg.vector_norm(stats.router_weight.detach().to(torch.float64), dim=1)


def gradient_entropy_scores(stats: ExpertStats) -> torch.Tensor:
    """EGE_e = -sum_i p_ei log p_ei with p_ei = |G_ei| / sum_j |G_ej|, 0 log 0 = 0.

    G [E, P] is the calibration-loss gradient w.r.t. expert e's P (flattened) weights.
    MC-Suite (arXiv 2504.05586) names expert gradient entropy (EGE) its second-best
    criterion as Min-EGE (drop the lowest entropy), but PAPERS.md does not give its
    formula; this is our reading: the Shannon entropy (nats) of how the gradient's
    magnitude spreads over the expert's weights. A gradient spread over many weights
    (high entropy) means the loss leans on the whole expert; one concentrated in a few
    weights means little of it matters. An expert with an all-zero gradient (never routed)
    scores 0. Comparable across experts of one layer, which share P.
    """
    _require(stats, "gradient-entropy", "expert_grads")
    magnitude = stats.expert_grads.detach().to(torch.float64).abs()
    total = magnitude.sum(dim=1, keepdim=True)
    p = magnitude / total.clamp(min=torch.finfo(torch.float64).tiny)
    # xlogy gives 0 where p = 0, so zero entries (and all-zero rows) add nothing.
    return -torch.special.xlogy(p, p).sum(dim=1)


def weight_norm_scores(stats: ExpertStats) -> torch.Tensor:
    """EWN_e = sqrt(sum over the stacked tensors W of ||W[e]||_F^2): the Frobenius norm of
    all of expert e's weights together (MC-Suite EWN, arXiv 2504.05586). Weight-only."""
    if not stats.expert_weights:
        raise CompressError("criterion 'weight-norm' needs ExpertStats.expert_weights; "
                            "pass the stacked expert tensors or pick another criterion")
    squares = [w.detach().to(torch.float64).reshape(stats.num_experts, -1).square().sum(dim=1)
               for w in stats.expert_weights]
    return torch.stack(squares).sum(dim=0).sqrt()


def random_scores(stats: ExpertStats, seed: int | None = None) -> torch.Tensor:
    """U(0, 1) per expert from a generator seeded with `seed` (default `stats.seed`): the
    control every criterion must beat. `functools.partial(random_scores, seed=s)` fixes it."""
    generator = torch.Generator().manual_seed(stats.seed if seed is None else seed)
    return torch.rand(stats.num_experts, generator=generator, dtype=torch.float64)


CRITERIA: dict[str, Callable[[ExpertStats], torch.Tensor]] = {
    "frequency": frequency_scores,
    "routing-weight": routing_weight_scores,
    "router-norm": router_norm_scores,
    "activation-norm": activation_norm_scores,
    "gradient-entropy": gradient_entropy_scores,
    "weight-norm": weight_norm_scores,
    "random": random_scores,
}


def experts_to_keep(scores: torch.Tensor, drop: int) -> list[int]:
    """The E - drop experts with the highest scores, sorted ascending.

    Ties are broken towards the lower index, so equal scores give the same answer on
    every run and machine (a tensor sort with ties is not guaranteed to be stable).
    """
    if scores.dim() != 1:
        raise CompressError(f"scores must be one value per expert [E], got {tuple(scores.shape)}")
    experts = scores.shape[0]
    if not 0 <= drop < experts:
        raise CompressError(f"drop must be in 0..{experts - 1} (at least one expert stays), "
                            f"got {drop}")
    values = scores.detach().to(torch.float64).tolist()
    if any(math.isnan(v) for v in values):
        raise CompressError("expert scores contain NaN; check the calibration statistics")
    ranked = sorted(range(experts), key=lambda e: (-values[e], e))
    return sorted(ranked[:experts - drop])


def iterative_schedule(num_experts: int, drop: int, rounds: int) -> list[int]:
    """How many experts to drop in each of `rounds` rounds (MC-Suite's iterative dropping,
    arXiv 2504.05586: drop s/K per round, re-score in between): as equal as possible,
    summing to `drop`; rounds = 1 is one-shot, [drop].

    When drop is not a multiple of rounds the earlier rounds take the extra expert: with
    more experts left, one more removed is a smaller share of the layer.
    """
    if not 0 <= drop < num_experts:
        raise CompressError(f"drop must be in 0..{num_experts - 1} (at least one expert "
                            f"stays), got {drop}")
    if not 1 <= rounds <= max(drop, 1):
        raise CompressError(f"rounds must be in 1..{max(drop, 1)} (each round drops at least "
                            f"one expert), got {rounds}")
    base, extra = divmod(drop, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def _reconstruction_error(layer_outputs_fn: Callable[[list[int]], torch.Tensor],
                          subset: list[int], reference: torch.Tensor) -> float:
    out = layer_outputs_fn(subset)
    if out.shape != reference.shape:
        raise CompressError(f"layer_outputs_fn({subset}) returned shape {tuple(out.shape)}, "
                            f"the full set gave {tuple(reference.shape)}")
    error = float((out.detach().to(torch.float64) - reference).square().sum())
    if math.isnan(error):
        raise CompressError(f"layer_outputs_fn({subset}) gave NaN outputs")
    return error


def best_subset_by_reconstruction(layer_outputs_fn: Callable[[list[int]], torch.Tensor],
                                  num_experts: int, keep: int,
                                  exhaustive_limit: int = EXHAUSTIVE_LIMIT) -> list[int]:
    """argmin over |S| = keep of ||out(S) - out({0..E-1})||_F^2 (NAEE, arXiv 2402.14800).

    `layer_outputs_fn(S)` runs the layer on the calibration data with only the experts in
    S (a sorted list) allowed, the router re-routing among them, and returns its output;
    the reference is the full set's output. The search:
      * exhaustive, as NAEE does, when C(E, keep) <= exhaustive_limit: every subset in
        lexicographic order, the first with the smallest error wins (1 + C(E, keep) calls);
      * otherwise greedy backward elimination: from the full set, remove the expert whose
        removal gives the smallest error, re-evaluate, repeat until `keep` remain
        (1 + sum_{m=keep+1..E} m calls). Our addition, not NAEE's; it may miss the optimum.
    Both break ties towards keeping lower indices. Returns the subset sorted ascending.
    """
    if not 1 <= keep <= num_experts:
        raise CompressError(f"keep must be in 1..{num_experts}, got {keep}")
    full = list(range(num_experts))
    if keep == num_experts:
        return full
    with torch.no_grad():  # calibration outputs only: no autograd graph to hold
        reference = layer_outputs_fn(full).detach().to(torch.float64)
        if math.comb(num_experts, keep) <= exhaustive_limit:
            return _exhaustive_search(layer_outputs_fn, num_experts, keep, reference)
        return _greedy_search(layer_outputs_fn, num_experts, keep, reference)


def _exhaustive_search(layer_outputs_fn: Callable[[list[int]], torch.Tensor], num_experts: int,
                       keep: int, reference: torch.Tensor) -> list[int]:
    best, best_error = None, math.inf
    for subset in itertools.combinations(range(num_experts), keep):
        error = _reconstruction_error(layer_outputs_fn, list(subset), reference)
        if error < best_error:  # strict: the lexicographically first minimum stays
            best, best_error = list(subset), error
    return best


def _greedy_search(layer_outputs_fn: Callable[[list[int]], torch.Tensor], num_experts: int,
                   keep: int, reference: torch.Tensor) -> list[int]:
    current = list(range(num_experts))
    while len(current) > keep:
        errors = {e: _reconstruction_error(layer_outputs_fn, [x for x in current if x != e],
                                           reference) for e in current}
        # Least harmful removal; on a tie remove the higher index (keep lower ones), the
        # same preference as the exhaustive search and experts_to_keep.
        worst = min(current, key=lambda e: (errors[e], -e))
        current.remove(worst)
    return current
