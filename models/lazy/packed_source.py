"""A lazy tensor source over an artifact whose quantized linears are stored packed, so a
compressed 7B model is evaluated (or exported) block by block like a float checkpoint.

The artifact is a single file or sharded (models/lazy/shard_writer.py): compressed-tensors
tensors in `model.safetensors` / `model-0000k-of-0000N.safetensors`, or Edge Toolkit's own
packing in `edge_toolkit_quantized.safetensors` / its shards; every shard's metadata holds
the layout of the linears it stores (models/qformat/layout.py). The source presents each
packed linear `NAME` as a float32 `NAME.weight`, dequantized by the same functions as the
in-memory loader (models/quantized_loader.py: `packed_reader`, then `dequantize()`), so a
model streamed from it computes with the very weights `models.load_model(DIR)` holds; its
packed tensors (`NAME.weight_packed`, `NAME.qweight`, ...) are not listed. Reading one
weight reads only that linear's packed tensors, by memory map (SafetensorsSource).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from models.errors import ModelError
from models.lazy.safetensors_source import SafetensorsSource
from models.lazy.source import TensorInfo, TensorSource
from models.qformat import QuantizedWeight
from models.quantized_loader import (
    edge_only_weights,
    merge_layouts,
    packed_reader,
    quantization_layout,
    shard_layouts,
)

_RECREATE = "re-create the artifact with `toolkit compress` or `toolkit run`"
_FLOAT32_BYTES = 4


class PackedSource(TensorSource):
    """The tensors of the packed artifact in `directory`, packed linears dequantized on
    read (see the module docstring). Headers and shard metadata are read at construction;
    no tensor is."""

    def __init__(self, directory: Path) -> None:
        directory = Path(directory)
        sources = _open_weight_files(directory)
        layouts = shard_layouts(list(sources))
        if not layouts:
            raise ModelError(f"{directory} holds no packed (quantized) linears: open it as a "
                             "float checkpoint (models.lazy.packed_source.open_weights_source "
                             "picks the right reader)")
        self._setup(directory, sources, layouts)

    @classmethod
    def _from_parts(cls, directory: Path, sources: dict[Path, SafetensorsSource],
                    layouts: dict[Path, tuple[str, dict]]) -> PackedSource:
        self = cls.__new__(cls)
        self._setup(directory, sources, layouts)
        return self

    def _setup(self, directory: Path, sources: dict[Path, SafetensorsSource],
               layouts: dict[Path, tuple[str, dict]]) -> None:
        self.directory = directory
        self.format, self.layers = merge_layouts(layouts)
        self._rebuild, suffixes = packed_reader(self.format)
        self._holder: dict[str, SafetensorsSource] = {}
        stored: dict[str, TensorInfo] = {}
        for source in dict.fromkeys(sources.values()):  # one source may hold every file
            for name, info in source.infos().items():
                self._holder[name] = source
                stored[name] = info
        self._parts: dict[str, list[str]] = {}  # linear -> its packed tensors
        for layer in self.layers:
            parts = [layer + suffix for suffix in suffixes if layer + suffix in stored]
            if not parts:
                raise ModelError(f"{directory}: the layout lists linear {layer!r} but no shard "
                                 f"holds its packed tensors: {_RECREATE}")
            if f"{layer}.weight" in stored:
                raise ModelError(f"{directory}: linear {layer!r} is stored both packed and as "
                                 f"a float weight: {_RECREATE}")
            self._parts[layer] = parts
        packed_names = {part for parts in self._parts.values() for part in parts}
        self._infos = {name: info for name, info in stored.items() if name not in packed_names}
        self._weights: dict[str, str] = {}  # "NAME.weight" -> linear NAME
        for layer, meta in self.layers.items():
            out, inp = (int(n) for n in meta["shape"])
            name = f"{layer}.weight"
            self._weights[name] = layer
            self._infos[name] = TensorInfo(name, (out, inp), torch.float32,
                                           out * inp * _FLOAT32_BYTES,
                                           stored[self._parts[layer][0]].file)
        self._closed = False

    # --- the TensorSource protocol --------------------------------------------------------

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def read(self, name: str) -> torch.Tensor:
        layer = self._weights.get(name)
        if layer is not None:
            # What load_quantized_module puts in the module: dequantize(), in float32.
            return self.packed(layer).dequantize().to(torch.float32)
        return self._holder_of(name).read(name)

    def raw(self, name: str) -> bytes:
        if name in self._weights:
            return self.read(name).numpy().tobytes()  # little-endian hosts only (as read)
        return self._holder_of(name).raw(name)

    def close(self) -> None:
        for source in set(self._holder.values()):
            source.close()
        self._closed = True

    # --- beyond the protocol --------------------------------------------------------------

    def packed(self, layer: str) -> QuantizedWeight:
        """The packed form (codes, scales, zero points or palette) of linear `layer` (its
        module name, as in the layout), read from its shard alone."""
        if self._closed:
            raise ValueError(f"the tensor source of {self.directory} is closed")
        parts = self._parts.get(layer)
        if parts is None:
            raise ModelError(f"{self.directory} holds no packed linear {layer!r}: pass one of "
                             "the linears its layout lists")
        tensors = {part: self._holder[part].read(part) for part in parts}
        try:
            return self._rebuild(tensors, {layer: self.layers[layer]})[layer]
        except ValueError as exc:
            raise ModelError(f"{self.directory}: packed weights do not match their layout "
                             f"({exc}): {_RECREATE}") from None

    def packed_names(self) -> list[str]:
        """The packed linears' module names, sorted."""
        return sorted(self.layers)

    def packed_tensor_names(self, layer: str) -> list[str]:
        """The stored tensors that hold linear `layer` packed (for copying them unchanged)."""
        return list(self._parts[layer])

    def stored_raw(self, name: str) -> bytes:
        """The stored bytes of any tensor in the files, packed ones included."""
        return self._holder_of(name).raw(name)

    def raw_chunks(self, name: str, chunk_bytes: int = 16 * 1024 * 1024) -> Iterator[bytes]:
        if name in self._weights:
            yield self.raw(name)
            return
        yield from self._holder_of(name).raw_chunks(name, chunk_bytes)

    def rows(self, name: str, indices: torch.Tensor) -> torch.Tensor:
        """`read(name)[indices]`; only the rows' pages are read for a stored tensor."""
        if name in self._weights:
            return self.read(name)[indices.to(torch.int64)]
        return self._holder_of(name).rows(name, indices)

    def __enter__(self) -> PackedSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _holder_of(self, name: str) -> SafetensorsSource:
        if self._closed:
            raise ValueError(f"the tensor source of {self.directory} is closed")
        if name not in self._infos or name in self._weights:
            raise ModelError(f"{self.directory} holds no tensor {name!r}: restore the "
                             "artifact, or the config.json that matches it")
        return self._holder[name]


def open_weights_source(directory: Path) -> TensorSource:
    """The lazy source of a model directory: PackedSource when any weights file's metadata
    holds a quantization layout (or Edge-Toolkit-only packed files are present), else
    SafetensorsSource for a plain float checkpoint. Headers and metadata only."""
    directory = Path(directory)
    sources = _open_weight_files(directory)
    layouts = shard_layouts(list(sources))
    if layouts:
        return PackedSource._from_parts(directory, sources, layouts)
    quantization_layout(list(sources))  # refuses a compressed-tensors file we did not write
    return next(iter(sources.values()))


def _open_weight_files(directory: Path) -> dict[Path, SafetensorsSource]:
    """weights file -> the SafetensorsSource reading it: Edge-Toolkit-only files (single
    or the shards of their index, each its own source), else the checkpoint transformers
    would read (model.safetensors or the shards of its index, one source for all)."""
    if not directory.exists():
        raise ModelError(f"{directory} does not exist: pass the folder of a model or artifact")
    edge = edge_only_weights(directory) if directory.is_dir() else []
    if edge:
        return {file: SafetensorsSource(file) for file in edge}
    source = SafetensorsSource(directory)
    root = directory if directory.is_dir() else directory.parent
    files = sorted({root / info.file for info in source.infos().values()})
    if not files:
        raise ModelError(f"{directory} holds no tensors: save the model with safetensors")
    return dict.fromkeys(files, source)
