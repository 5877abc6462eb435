"""The protocol every lazy tensor source satisfies: names, shapes and dtypes from the
file headers alone, and one tensor's values read on demand.

A source never keeps what it returned: `read` gives a fresh CPU tensor (not backed by the
file's memory map), so freeing it returns the memory, and the process's resident size
stays bounded by what the caller holds, not by the checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What the headers say about one stored tensor."""

    name: str  # the Hugging Face parameter name, e.g. "model.layers.3.mlp.up_proj.weight"
    shape: tuple[int, ...]
    dtype: torch.dtype  # the dtype `read` returns
    nbytes: int  # bytes `read` returns (shape x dtype size)
    file: str  # the file holding it, relative to the checkpoint (for messages)


class TensorSource(Protocol):
    """Lazily readable named tensors of one checkpoint."""

    def infos(self) -> dict[str, TensorInfo]:
        """Every stored tensor, from headers only (nothing is read)."""

    def read(self, name: str) -> torch.Tensor:
        """One tensor as stored (dtype per `infos`), a fresh CPU tensor owned by the caller."""

    def raw(self, name: str) -> bytes:
        """The tensor's stored bytes, exactly as on disk (safetensors little-endian layout
        of `infos()[name].dtype`), for copying an unchanged tensor into an output shard."""

    def close(self) -> None:
        """Release any open file handles / maps."""
