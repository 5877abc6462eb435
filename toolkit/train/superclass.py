"""Super-classes for Mobile V-MoE's guided router (Daxberger et al., arXiv 2309.04354):
group the classes a dense model confuses with each other, one group per expert.

    P = row-normalised confusion matrix (P[i, j] = share of class i predicted as j)
    s(i, j) = P[i, j] + P[j, i]                        mutual confusion, i != j
    average linkage: start from singletons, repeatedly merge the two groups A, B with the
    largest mean s over A x B, until `groups` remain.

Classes that are mistaken for one another end up behind the same expert, so the router's
task (pick the super-class) is easy and each expert specialises in telling similar classes
apart. Ties break towards the lowest class indices, so the result is deterministic.
"""

from __future__ import annotations

import torch

from toolkit.errors import UserError


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, classes: int
                     ) -> torch.Tensor:
    """counts[i, j] = images of class i predicted as j (int64 [C, C])."""
    index = labels.long() * classes + predictions.long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def superclasses_from_confusion(confusion: torch.Tensor, groups: int) -> list[int]:
    """Super-class id (0..groups-1) of every class, numbered by each group's lowest class."""
    classes = confusion.shape[0]
    if confusion.shape != (classes, classes):
        raise UserError(f"a confusion matrix is square, got {tuple(confusion.shape)}")
    if not 1 <= groups <= classes:
        raise UserError(f"cannot make {groups} super-classes from {classes} classes: "
                        f"use 1..{classes} experts")
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)
    mutual = rates + rates.T
    clusters = [[c] for c in range(classes)]
    while len(clusters) > groups:
        best, best_pair = -1.0, (0, 1)
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                link = float(mutual[clusters[a]][:, clusters[b]].mean())
                if link > best + 1e-12:  # strict: the first (lowest-index) pair wins ties
                    best, best_pair = link, (a, b)
        a, b = best_pair
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    clusters.sort(key=min)
    assignment = [0] * classes
    for group, members in enumerate(clusters):
        for c in members:
            assignment[c] = group
    return assignment
