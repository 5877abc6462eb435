"""The batches distillation trains on: (batch, label) pairs forever, in an order fixed by
the seed (a tensor of samples reshuffled each epoch, or a user's iterable re-read each
epoch), moved to the model's device. Kept apart from the loop in compress/distill.py."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from compress.errors import CompressError


def batch_stream(batches: torch.Tensor | Iterable[Any], labels: Any, batch_size: int,
                 seed: int) -> Iterator[tuple[Any, Any]]:
    """(batch, label or None) pairs forever, in an order fixed by the seed."""
    if isinstance(batches, torch.Tensor):
        return tensor_stream(batches, labels, batch_size, seed)
    if isinstance(labels, torch.Tensor):
        raise CompressError("labels is a tensor but batches is an iterable: pass labels as "
                            "an iterable of per-batch labels, or batches as one tensor")
    return iterable_stream(batches, labels)


def iterable_stream(batches: Iterable[Any],
                    labels: Iterable[Any] | None) -> Iterator[tuple[Any, Any]]:
    # A re-iterable source (a list, a DataLoader) gets a fresh pass each epoch, so a
    # shuffling loader reshuffles; a one-shot iterator is cached on its first pass.
    one_shot = iter(batches) is batches or (labels is not None and iter(labels) is labels)
    cache: list[tuple[Any, Any]] = []
    while True:
        if one_shot and cache:
            source: Iterable[tuple[Any, Any]] = cache
        elif labels is not None:
            source = zip(batches, labels, strict=True)  # misaligned labels: an error
        else:
            source = ((batch, None) for batch in batches)
        count = 0
        for pair in source:
            count += 1
            if one_shot and source is not cache:
                cache.append(pair)
            yield pair
        if count == 0:  # an empty source would otherwise spin forever
            raise CompressError("batches is empty: pass at least one batch")


def shuffled_forever(count: int, seed: int) -> Iterator[int]:
    """Indices 0..count-1: a seeded permutation per pass, passes repeated forever (the order
    the recovery, LoRA and learned-rotation loops draw their windows in)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(count, generator=generator).tolist()


def tensor_stream(samples: torch.Tensor, labels: Any, batch_size: int,
                  seed: int) -> Iterator[tuple[Any, Any]]:
    if labels is not None and (not isinstance(labels, torch.Tensor)
                               or labels.shape[0] != samples.shape[0]):
        raise CompressError(f"labels must be a tensor with {samples.shape[0]} rows, one per "
                            "sample of batches")
    if samples.shape[0] == 0:
        raise CompressError("batches is empty: pass at least one sample")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(samples.shape[0], generator=generator)
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]
            yield samples[rows], (labels[rows] if labels is not None else None)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
