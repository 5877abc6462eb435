"""Check a safetensors file's structure before anything reads it.

The format is an 8-byte little-endian header length, a JSON header mapping tensor names to
`{dtype, shape, data_offsets}`, then the raw bytes. A truncated download or a corrupt
header is caught here with a message that names the file, instead of deep inside a loader.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from models.errors import ModelError

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec's own limit


def check_safetensors_file(path: Path) -> None:
    """Raise ModelError unless `path` is a complete, well-formed safetensors file."""
    fix = "re-download or re-save it with safetensors"
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelError(f"{path} is not a safetensors file (only {size} bytes): {fix}")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise ModelError(f"{path} is truncated or corrupt (bad header length): {fix}")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelError(f"{path} has a corrupt header (not JSON): {fix}") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} has a corrupt header: {fix}")
    data_len = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        _check_entry(path, name, info, data_len, fix)


def _check_entry(path: Path, name: str, info: object, data_len: int, fix: str) -> None:
    try:
        begin, end = info["data_offsets"]  # type: ignore[index]
        expected = math.prod(info["shape"]) * _DTYPE_BYTES[info["dtype"]]  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{path}: tensor {name!r} has a corrupt header entry: {fix}") from None
    if end > data_len:
        raise ModelError(
            f"{path} is truncated: tensor {name!r} ends at byte {end} of the data but the "
            f"file holds {data_len}: {fix}"
        )
    if end - begin != expected or begin < 0:
        raise ModelError(f"{path}: tensor {name!r} has inconsistent offsets: {fix}")
