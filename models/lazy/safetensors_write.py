"""Writing a safetensors file whose bytes depend only on its tensors and metadata.

The `safetensors` package keeps the `__metadata__` entries in a hash map whose order
changes from one process to the next, so two runs writing the same tensors with two
metadata keys produce different files. A resumed streaming run must write the same bytes
as an uninterrupted one, so shards are serialised here, following the format:

    8 bytes      little-endian u64 N, the header's length
    N bytes      JSON: {"__metadata__": {str: str}, name: {"dtype", "shape",
                 "data_offsets": [begin, end]}, ...}, padded with spaces to a multiple of 8
    the data     every tensor's bytes, little-endian, row-major, back to back

with keys sorted and tensors laid out by decreasing element size, then name (so every
tensor starts at a multiple of its element size, as the reference writer arranges). The
file is written under a temporary name, flushed, fsynced and renamed; its SHA-256 is
computed on the way.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import torch

from models.lazy.atomic_file import atomic_file
from models.lazy.crash_points import crash_point

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def _layout(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))


def header_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name in _layout(tensors):
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> str:
    """Write `tensors` to `path` atomically; returns the file's SHA-256 (hex)."""
    if sys.byteorder != "little":  # safetensors data is little-endian; tensors are native
        raise OSError("safetensors files are written on little-endian machines only")
    unknown = {t.dtype for t in tensors.values()} - set(DTYPE_NAMES)
    if unknown:
        raise ValueError(f"cannot store dtype {sorted(map(str, unknown))[0]} in safetensors")
    digest = hashlib.sha256()
    names = _layout(tensors)
    with atomic_file(path) as handle:
        for i, chunk in enumerate([header_bytes(tensors, metadata),
                                   *(_tensor_bytes(tensors[n]) for n in names)]):
            if i == 1 + len(names) // 2:
                handle.flush()
                crash_point("mid-write")  # tests: a kill with half a file on disk
            handle.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()
