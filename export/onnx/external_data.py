"""Initializers written to an ONNX external data file as they are made, so a model's weights
never have to sit in memory together.

ONNX keeps a graph in one protobuf message, which cannot exceed 2 GB; bigger models keep
their tensors in a side file that the graph names (`location`, `offset`, `length` on each
TensorProto). `onnx.save_model(..., save_as_external_data=True)` moves the tensors out
only when the whole model is already in memory; `ExternalDataWriter` instead appends one
tensor's bytes to the side file right away (from a numpy buffer, or piece by piece for a
tensor converted in row blocks) and returns a TensorProto that only points to them, so
the writer's resident size is the piece being written.

Large tensors start at a multiple of 64 KiB, the allocation granularity onnxruntime needs
to memory-map external data on every OS (4 KiB pages on Linux, 64 KiB on Windows); small
ones are packed at 64-byte alignment, and the tiniest stay inside the graph.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MAP_ALIGNMENT = 64 * 1024
SMALL_ALIGNMENT = 64
MAP_FROM_BYTES = 1 << 20  # tensors this large are aligned for memory mapping
INLINE_BELOW_BYTES = 1024  # scalars, shapes and tiny tables stay in the graph


class ExternalDataWriter:
    """Appends initializers' bytes to `model_path.name + ".data"` beside the model."""

    def __init__(self, model_path: Path) -> None:
        self.location = Path(model_path).name + ".data"
        self.path = Path(model_path).with_name(self.location)
        self._file = open(self.path, "wb")  # noqa: SIM115  # closed by close()
        self.offset = 0

    def add(self, tensor):
        """`tensor` (onnx.TensorProto) with its data moved to the side file, unless tiny."""
        from onnx import numpy_helper

        if not tensor.HasField("raw_data"):
            # make_tensor's typed fields (int32_data for UINT4, ...) -> packed raw bytes
            tensor = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
        data = tensor.raw_data
        if len(data) < INLINE_BELOW_BYTES:
            return tensor
        return self.add_chunks(tensor.name, tensor.data_type, list(tensor.dims), [data],
                               len(data))

    def add_array(self, name: str, array: np.ndarray):
        """A numpy array written straight from its buffer (no protobuf copy of it)."""
        from onnx import helper, numpy_helper

        array = np.asarray(array, order="C")
        if array.nbytes < INLINE_BELOW_BYTES:
            return numpy_helper.from_array(array, name)
        return self.add_chunks(name, helper.np_dtype_to_tensor_dtype(array.dtype),
                               list(array.shape), [memoryview(array).cast("B")],
                               array.nbytes)

    def add_chunks(self, name: str, data_type: int, dims: list[int], chunks: Iterable,
                   nbytes: int):
        """A tensor of `nbytes` whose little-endian bytes come in pieces (e.g. row blocks
        of an embedding converted one block at a time), written in order."""
        from onnx import TensorProto

        alignment = MAP_ALIGNMENT if nbytes >= MAP_FROM_BYTES else SMALL_ALIGNMENT
        padding = -self.offset % alignment
        if padding:
            self._file.write(b"\0" * padding)
            self.offset += padding
        start = self.offset
        for chunk in chunks:
            self.offset += self._file.write(chunk)
        if self.offset - start != nbytes:
            raise ValueError(f"tensor {name}: wrote {self.offset - start} bytes, expected "
                             f"{nbytes}")
        external = TensorProto()
        external.name = name
        external.data_type = data_type
        external.dims.extend(dims)
        external.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(start)),
                           ("length", str(nbytes))):
            entry = external.external_data.add()
            entry.key, entry.value = key, value
        return external

    def close(self) -> None:
        """Flush the side file to disk (a crash after this leaves it whole)."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> ExternalDataWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
