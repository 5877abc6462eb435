"""Expert dropping for mixtures of experts: importance criteria, schedules, subset search.

The criteria are pure functions over `ExpertStats` (MC-Suite, arXiv 2504.05586; REAP;
NAEE, arXiv 2402.14800); the model surgery is the model family's own
(`models.vmoe.drop_experts`), reached through `models.moe_groups`; `drop-experts`
(compress/experts/drop.py) is the registered method.
"""

from compress.experts.criteria import (
    CRITERIA,
    EXHAUSTIVE_LIMIT,
    ExpertStats,
    activation_norm_scores,
    best_subset_by_reconstruction,
    experts_to_keep,
    frequency_scores,
    gradient_entropy_scores,
    iterative_schedule,
    random_scores,
    router_norm_scores,
    routing_weight_scores,
    weight_norm_scores,
)
from compress.experts.drop import CRITERION_CHOICES, DropExpertsConfig, DropExpertsReport

__all__ = [
    "CRITERIA",
    "CRITERION_CHOICES",
    "DropExpertsConfig",
    "DropExpertsReport",
    "EXHAUSTIVE_LIMIT",
    "ExpertStats",
    "activation_norm_scores",
    "best_subset_by_reconstruction",
    "experts_to_keep",
    "frequency_scores",
    "gradient_entropy_scores",
    "iterative_schedule",
    "random_scores",
    "router_norm_scores",
    "routing_weight_scores",
    "weight_norm_scores",
]
