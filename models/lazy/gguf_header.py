"""The header of a GGUF file (ggml's docs/gguf.md, versions 2 and 3), parsed without
holding its arrays.

Why not `gguf.GGUFReader`: it turns every element of the tokenizer arrays into numpy
objects: 2.2 s and +160 MB of resident memory for SmolLM2-135M's 98 MB file, 21 s and
+550 MB for Qwen2.5-1.5B's 151k vocabulary, more than the tensors of a block. The header
is small and documented, so it is parsed here, skipping arrays by their lengths (0.1 s,
+5 MB for either file), through a read-only map closed before returning.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelError

GGUF_MAGIC = b"GGUF"
REDOWNLOAD = "re-download the GGUF file or convert it again"
_DEFAULT_ALIGNMENT = 32  # docs/gguf.md: `general.alignment`, when absent

# GGUF metadata value types (docs/gguf.md): fixed-size scalars by struct format.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufHeader:
    """What the header says: scalar metadata (arrays are skipped, their length kept) and
    each tensor's type, GGUF shape and offset relative to the data section."""

    version: int
    metadata: dict[str, object]
    tensors: dict[str, tuple[int, tuple[int, ...], int]]  # name -> (type, shape, offset)
    data_start: int
    file_size: int

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelError("the GGUF metadata has no general.architecture: "
                             f"{REDOWNLOAD}")
        return arch


def read_gguf_header(path: Path) -> GgufHeader:
    """Parse `path`'s header; a wrong magic, a truncated or corrupt header is one line."""
    path = Path(path)
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (no GGUF magic bytes): pass a .gguf "
                             "model file")
        size = os.fstat(handle.fileno()).st_size
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            try:
                return _Parser(view, size).header()
            except (struct.error, UnicodeDecodeError, IndexError, ValueError) as exc:
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"{path}: the GGUF header is truncated or corrupt "
                                 f"({type(exc).__name__}): {REDOWNLOAD}") from None


class _Parser:
    """A cursor over the header bytes (docs/gguf.md, versions 2 and 3)."""

    def __init__(self, view, size: int) -> None:
        self.view, self.size, self.at = view, size, 4

    def take(self, fmt: str):
        value = struct.unpack_from(fmt, self.view, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.take("<Q")
        self._need(length)
        text = bytes(self.view[self.at:self.at + length]).decode("utf-8")
        self.at += length
        return text

    def _need(self, count: int) -> None:
        if count < 0 or self.at + count > self.size:
            raise ModelError(f"the GGUF header runs past the end of the file: {REDOWNLOAD}")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            self._skip_array(item, count)
            return _SkippedArray(item, count)
        raise ModelError(f"the GGUF header has an unknown value type {kind}: {REDOWNLOAD}")

    def _skip_array(self, item: int, count: int) -> None:
        if item in _SCALARS:
            width = struct.calcsize(_SCALARS[item])
            self._need(width * count)
            self.at += width * count
        elif item == _STRING:
            for _ in range(count):  # each string is its u64 length then its bytes
                length = self.take("<Q")
                self._need(length)
                self.at += length
        elif item == _ARRAY:
            for _ in range(count):
                self._skip_array(self.take("<I"), self.take("<Q"))
        else:
            raise ModelError(f"the GGUF header has an unknown array type {item}: {REDOWNLOAD}")

    def header(self) -> GgufHeader:
        version = self.take("<I")
        if version not in (2, 3):
            raise ModelError(f"GGUF version {version} is not supported (2 and 3 are): "
                             "convert the model with a current llama.cpp")
        tensor_count, kv_count = self.take("<Q"), self.take("<Q")
        if tensor_count > self.size or kv_count > self.size:
            raise ModelError(f"the GGUF header counts are impossible: {REDOWNLOAD}")
        metadata = {}
        for _ in range(kv_count):
            key = self.string()
            metadata[key] = self.value(self.take("<I"))
        tensors = {}
        for _ in range(tensor_count):
            name = self.string()
            dims = self.take("<I")
            if not 1 <= dims <= 4:
                raise ModelError(f"GGUF tensor {name} has {dims} dimensions: {REDOWNLOAD}")
            shape = tuple(self.take("<Q") for _ in range(dims))
            tensors[name] = (self.take("<I"), shape, self.take("<Q"))
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ModelError(f"GGUF general.alignment is {alignment!r}: {REDOWNLOAD}")
        start = -(-self.at // alignment) * alignment
        return GgufHeader(version, metadata, tensors, start, self.size)


@dataclass(frozen=True)
class _SkippedArray:
    """An array value that was skipped (tokenizer vocabularies): its type and length."""

    item_type: int
    count: int
