"""Tensors of a safetensors checkpoint read one at a time by memory map, so a 7B model
(15 GB of shards) is compressed in a few GB of memory: the process holds only the tensors
the caller keeps, never a whole shard.

Construction reads headers only (models/checkpoint_check.py, models/safetensors_check.py:
JSON headers, byte ranges that tile each file, file sizes, the shard index agreeing with
the shards), so a damaged checkpoint is refused in one line before any tensor is read.

`read` maps one window of the shard at a time (at most `_WINDOW` bytes, aligned down to
the allocation granularity as mmap requires), copies it into a tensor of our own and
unmaps it. A page of a file mapping counts in the process's resident size only while it is
mapped, so the peak is the returned tensor plus one window, not twice the tensor (a
whole-tensor map then `.clone()` would hold both at the end of the copy), and nothing of
the shard stays resident after the call. `rows` maps the tensor's range (address space
only) and gathers the wanted rows, so only their pages are touched.

Byte order: safetensors stores little-endian values and `read` reinterprets them in place,
which is right only on little-endian hosts; big-endian hosts are out of scope and are
refused at construction.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint_check import StoredTensor, read_checkpoint_headers
from models.errors import ModelError
from models.lazy.source import TensorInfo, TensorSource
from models.safetensors_check import read_safetensors_layout

# The safetensors dtype names (the format's specification) and the torch dtypes `read`
# returns; every name models/safetensors_check.py accepts is here.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "U16": torch.uint16, "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64,
    "U64": torch.uint64, "F16": torch.float16, "BF16": torch.bfloat16,
    "F32": torch.float32, "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# Bytes mapped at once by `read` and returned at once by `raw_chunks`: large enough that
# the per-call cost of mmap/munmap vanishes, small beside a 1.5 GB embedding table.
_WINDOW = 16 * 1024 * 1024
_RESAVE = "re-download or re-save it with safetensors"


@dataclass(frozen=True)
class _Located:
    info: TensorInfo
    path: Path
    begin: int  # absolute file offset of the first byte


class SafetensorsSource(TensorSource):
    """The tensors of `directory` (model.safetensors, or the shards of
    model.safetensors.index.json; a single .safetensors file path works too), read lazily.

    Holds no file handle or map between calls, so many sources may be open at once; each
    call reopens the shard and first checks it is the file whose headers were read."""

    def __init__(self, directory: Path) -> None:
        if sys.byteorder != "little":
            raise ModelError("lazy safetensors reading needs a little-endian host (the "
                             "format's byte order): run on an x86-64 or ARM64 machine")
        directory = Path(directory)
        if not directory.exists():
            raise ModelError(f"{directory} does not exist: pass the folder of a safetensors "
                             "checkpoint (model.safetensors or its sharded index)")
        self.directory = directory
        stored = _read_headers(directory)
        self._tensors: dict[str, _Located] = {}
        for name, entry in stored.items():
            dtype = TORCH_DTYPES[entry.dtype]
            begin, end = entry.offsets
            relative = entry.file.name
            self._tensors[name] = _Located(
                TensorInfo(name, entry.shape, dtype, end - begin, relative), entry.file, begin)
        # What each file was when its header was checked: a file cut or replaced afterwards
        # would yield wrong values, or kill the process with SIGBUS when a mapped page past
        # its new end is touched.
        self._stamps = {path: _stamp(os.stat(path)) for path in
                        {located.path for located in self._tensors.values()}}
        self._closed = False

    # --- the TensorSource protocol --------------------------------------------------------

    def infos(self) -> dict[str, TensorInfo]:
        return {name: located.info for name, located in self._tensors.items()}

    def read(self, name: str) -> torch.Tensor:
        located = self._locate(name)
        info = located.info
        out = torch.empty(info.nbytes, dtype=torch.uint8)
        if info.nbytes:
            dest = out.numpy()
            with self._open(located.path) as handle:
                for done in range(0, info.nbytes, _WINDOW):
                    size = min(_WINDOW, info.nbytes - done)
                    _copy_mapped(handle, located.begin + done, dest[done:done + size])
        return out.view(info.dtype).reshape(info.shape)

    def raw(self, name: str) -> bytes:
        # One read into one bytes object: joining chunks would hold the tensor twice.
        located = self._locate(name)
        with self._open(located.path) as handle:
            handle.seek(located.begin)
            data = handle.read(located.info.nbytes)
        if len(data) != located.info.nbytes:
            raise self._changed(located.path)
        return data

    def close(self) -> None:
        # Nothing is held between calls; closing only makes later reads an error.
        self._closed = True

    # --- beyond the protocol --------------------------------------------------------------

    def raw_chunks(self, name: str, chunk_bytes: int = _WINDOW) -> Iterator[bytes]:
        """The stored bytes of `name` in pieces of at most `chunk_bytes`, so hashing or
        copying a 1.5 GB tensor never holds it whole."""
        located = self._locate(name)
        with self._open(located.path) as handle:
            handle.seek(located.begin)
            left = located.info.nbytes
            while left:
                piece = handle.read(min(chunk_bytes, left))
                if not piece:
                    raise self._changed(located.path)
                left -= len(piece)
                yield piece

    def rows(self, name: str, indices: torch.Tensor) -> torch.Tensor:
        """`read(name)[indices]` for a 2-D tensor (an embedding lookup of calibration token
        ids), reading only the pages of the rows asked for. The result has shape
        `indices.shape + (columns,)` and owns its memory."""
        located = self._locate(name)
        info = located.info
        if len(info.shape) != 2:
            raise ValueError(f"rows() needs a 2-D tensor; {name!r} has shape {list(info.shape)}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"rows() needs integer indices, got {indices.dtype}")
        count, columns = info.shape
        flat = indices.reshape(-1).to(torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= count):
            bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
            raise ModelError(f"row {bad} asked of {name!r} in {info.file}, which has {count} "
                             "rows: use the tokenizer saved with this checkpoint")
        if not flat.numel() or not columns:
            return torch.empty(*indices.shape, columns, dtype=info.dtype)
        row_bytes = info.nbytes // count
        picked = np.empty((flat.numel(), row_bytes), dtype=np.uint8)
        with self._open(located.path) as handle:
            _gather_mapped(handle, located.begin, count, row_bytes, flat.numpy(), picked)
        out = torch.from_numpy(picked).view(info.dtype)
        return out.reshape(*indices.shape, columns)

    def __enter__(self) -> SafetensorsSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers --------------------------------------------------------------------------

    def _locate(self, name: str) -> _Located:
        if self._closed:
            raise ValueError(f"the tensor source of {self.directory} is closed")
        located = self._tensors.get(name)
        if located is None:
            raise ModelError(f"{self.directory} holds no tensor {name!r}: restore the "
                             "checkpoint (re-download or re-save it), or the config.json "
                             "that matches it")
        return located

    def _open(self, path: Path):
        handle = path.open("rb")
        if _stamp(os.fstat(handle.fileno())) != self._stamps[path]:
            handle.close()
            raise self._changed(path)
        return handle

    def _changed(self, path: Path) -> ModelError:
        return ModelError(f"{path} changed on disk after its header was read (size or time "
                          "differs): leave the checkpoint alone while it is read, then rerun")


def open_safetensors_source(directory: Path) -> SafetensorsSource:
    """The lazy source of a safetensors checkpoint folder (or single file); headers only."""
    return SafetensorsSource(Path(directory))


def tensor_bytes_sha256(source: TensorSource, names: Iterable[str]) -> str:
    """SHA-256 hex digest fingerprinting the stored bytes of `names`, in the order given.

    Each tensor contributes a line `name dtype shape nbytes` and then its raw bytes: the
    framing keeps two different splits of the same bytes (or a renamed tensor) from
    hashing alike. Bytes are streamed in chunks where the source offers `raw_chunks`
    (SafetensorsSource does), so a 1.5 GB tensor is never held twice; other sources fall
    back to `raw`."""
    digest = hashlib.sha256()
    infos = source.infos()
    chunks = getattr(source, "raw_chunks", None)
    for name in names:
        info = infos[name]
        shape = ",".join(str(n) for n in info.shape)
        digest.update(f"{name} {info.dtype} [{shape}] {info.nbytes}\n".encode())
        for piece in (chunks(name) if chunks is not None else (source.raw(name),)):
            digest.update(piece)
    return digest.hexdigest()


def _read_headers(path: Path) -> dict[str, StoredTensor]:
    if path.is_dir():
        return read_checkpoint_headers(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"{path} is not a .safetensors file nor a checkpoint folder: pass "
                         "the folder holding model.safetensors (or its sharded index)")
    layout = read_safetensors_layout(path)
    stored = {}
    for name, entry in layout.entries.items():
        begin, end = entry["data_offsets"]
        stored[name] = StoredTensor(path, entry["dtype"], tuple(entry["shape"]),
                                    (layout.data_start + begin, layout.data_start + end))
    return stored


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _map(handle, offset: int, length: int) -> tuple[mmap.mmap, int]:
    """A read-only map covering file bytes [offset, offset + length), and where `offset`
    falls in it (mmap offsets must be multiples of the allocation granularity)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapped = mmap.mmap(handle.fileno(), offset - start + length, offset=start,
                           access=mmap.ACCESS_READ)
    except ValueError:  # the file is now shorter than the header said
        raise ModelError(f"{handle.name} is truncated (shorter than its header says): "
                         f"{_RESAVE}") from None
    return mapped, offset - start


def _copy_mapped(handle, offset: int, dest: np.ndarray) -> None:
    """Copy file bytes [offset, offset + dest.size) into `dest`, then unmap them."""
    mapped, skip = _map(handle, offset, dest.size)
    with mapped:
        source = np.frombuffer(mapped, dtype=np.uint8, count=dest.size, offset=skip)
        dest[:] = source
        del source  # the map cannot close while an array still views it


def _gather_mapped(handle, offset: int, count: int, row_bytes: int, rows: np.ndarray,
                   out: np.ndarray) -> None:
    """out[i] = row rows[i] of the (count, row_bytes) table at file `offset`; only the
    pages of the rows asked for are read."""
    mapped, skip = _map(handle, offset, count * row_bytes)
    with mapped:
        table = np.frombuffer(mapped, dtype=np.uint8, count=count * row_bytes, offset=skip)
        np.take(table.reshape(count, row_bytes), rows, axis=0, out=out)
        del table
