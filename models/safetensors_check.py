"""Check a safetensors file's structure before anything reads it.

The format is an 8-byte little-endian header length, a JSON header mapping tensor names to
`{dtype, shape, data_offsets}`, then the raw bytes. A truncated download or a corrupt
header is caught here with a message that names the file, instead of deep inside a loader.
The byte ranges must tile the data exactly, as the format's specification requires: two
tensors that share bytes (a crafted file: editing one silently edits the other) or bytes
that belong to no tensor (room to smuggle a second payload) are refused.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelError

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64"})
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec's own limit
_FIX = "re-download or re-save it with safetensors"


@dataclass(frozen=True)
class SafetensorsLayout:
    """Where a checked file's tensors lie: `data_start` is the file offset of the data
    section (8 + header length), to which each entry's `data_offsets` are relative. Lazy
    readers (models/lazy/safetensors_source.py) need it to map one tensor's bytes."""

    data_start: int
    entries: dict[str, dict]


def check_safetensors_file(path: Path) -> dict[str, dict]:
    """Raise ModelError unless `path` is a complete, well-formed safetensors file.

    Returns its tensor entries (name -> {dtype, shape, data_offsets}) so callers can compare
    names and shapes with a model without reading a byte of weights."""
    return read_safetensors_layout(path).entries


def read_safetensors_layout(path: Path) -> SafetensorsLayout:
    """`check_safetensors_file`, also returning where the data section starts."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelError(f"{path} is not a safetensors file (only {size} bytes): {_FIX}")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise ModelError(f"{path} is truncated or corrupt (bad header length): {_FIX}")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelError(f"{path} has a corrupt header (not JSON): {_FIX}") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} has a corrupt header: {_FIX}")
    data_len = size - 8 - header_len
    entries = {name: info for name, info in header.items() if name != "__metadata__"}
    for name, info in entries.items():
        _check_entry(path, name, info, data_len)
    _check_byte_ranges(path, entries, data_len)
    return SafetensorsLayout(8 + header_len, entries)


def _check_entry(path: Path, name: str, info: object, data_len: int) -> None:
    try:
        begin, end = info["data_offsets"]  # type: ignore[index]
        shape = info["shape"]  # type: ignore[index]
        if not all(isinstance(n, int) for n in (begin, end, *shape)) or min(shape, default=0) < 0:
            raise ValueError(name)
        expected = math.prod(shape) * _DTYPE_BYTES[info["dtype"]]  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{path}: tensor {name!r} has a corrupt header entry: {_FIX}") from None
    if end > data_len:
        raise ModelError(
            f"{path} is truncated: tensor {name!r} ends at byte {end} of the data but the "
            f"file holds {data_len}: {_FIX}"
        )
    if end - begin != expected or begin < 0:
        raise ModelError(f"{path}: tensor {name!r} has inconsistent offsets: {_FIX}")


def _check_byte_ranges(path: Path, entries: dict[str, dict], data_len: int) -> None:
    """Sorted by start, each tensor must begin where the previous one ended."""
    spans = sorted((info["data_offsets"][0], info["data_offsets"][1], name)
                   for name, info in entries.items())
    cursor, previous = 0, None
    for begin, end, name in spans:
        if begin < cursor:
            raise ModelError(
                f"{path}: tensors {previous!r} and {name!r} overlap (bytes {begin}-"
                f"{min(cursor, end)} belong to both): the file is corrupt or crafted, {_FIX}"
            )
        if begin > cursor:
            raise ModelError(f"{path}: bytes {cursor}-{begin} of the data belong to no tensor "
                             f"(before {name!r}): the file is corrupt or crafted, {_FIX}")
        cursor, previous = end, name
    if cursor != data_len:
        raise ModelError(f"{path}: {data_len - cursor} bytes after the last tensor belong to "
                         f"no tensor: the file is corrupt or crafted, {_FIX}")
