"""A set of portraits with masks, from the generator or a user's folder, and its seeded
held-out split."""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from toolkit.errors import UserError

# Attribute label of images whose hair style is unknown (a user's folder): the
# attribute loss skips them (cross-entropy's ignore_index).
UNKNOWN_ATTRIBUTE = -1


@dataclasses.dataclass
class PortraitSet:
    images: torch.Tensor  # uint8 [N, 3, H, W], raw pixels
    masks: torch.Tensor  # uint8 [N, 1, H, W] in {0, 1}: 1 = person
    attributes: torch.Tensor  # int64 [N]: hair-style index, or UNKNOWN_ATTRIBUTE
    attribute_names: tuple[str, ...]  # what the attribute indices mean; () if none
    # For reports: where the images came from, e.g. "synthetic portraits (generated,
    # seed 0: ...)" or the user's folder; numbers computed on this set must carry it.
    source: str

    def __post_init__(self):
        n = self.images.shape[0]
        if self.masks.shape[0] != n or self.attributes.shape[0] != n:
            raise ValueError("images, masks and attributes must have the same length")
        if self.masks.shape[-2:] != self.images.shape[-2:]:
            raise ValueError("masks must have the images' height and width")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def sha256(self) -> str:
        """Names the exact data: images, then masks, then attributes (bytes)."""
        digest = hashlib.sha256(self.images.numpy().tobytes())
        digest.update(self.masks.numpy().tobytes())
        digest.update(self.attributes.numpy().tobytes())
        return digest.hexdigest()

    def subset(self, index: torch.Tensor, note: str) -> PortraitSet:
        return PortraitSet(self.images[index], self.masks[index], self.attributes[index],
                           self.attribute_names, f"{self.source}, {note}")

    def split(self, fraction: float, seed: int) -> tuple[PortraitSet, PortraitSet]:
        """(kept, held out): a seeded `fraction` of the portraits held out (at least one,
        and at least one kept)."""
        if not 0 < fraction < 1:
            raise UserError(f"held-out fraction must be between 0 and 1, got {fraction}")
        if len(self) < 2:
            raise UserError(f"{self.source}: {len(self)} portrait(s), need at least two to "
                            "hold some out for validation")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        cut = min(len(self) - 1, max(1, round(fraction * len(self))))
        held, kept = order[:cut].sort().values, order[cut:].sort().values
        return (self.subset(kept, f"{len(kept)} kept (split seed {seed})"),
                self.subset(held, f"{len(held)} held out (split seed {seed})"))
