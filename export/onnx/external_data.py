"""Initializers written to an ONNX external data file as they are made, so a model's weights
never have to sit in memory together.

ONNX keeps a graph in one protobuf message, which cannot exceed 2 GB; bigger models keep
their tensors in a side file that the graph names (`location`, `offset`, `length` on each
TensorProto). `onnx.save_model(..., save_as_external_data=True)` moves the tensors out
only when the whole model is already in memory; `ExternalDataWriter.add` instead appends
one tensor's bytes to the side file right away and returns a TensorProto that only points
to them, so the writer's resident size is the tensor being added.

Large tensors start at a multiple of 64 KiB, the allocation granularity onnxruntime needs
to memory-map external data on every OS (4 KiB pages on Linux, 64 KiB on Windows); small
ones are packed at 64-byte alignment, and the tiniest stay inside the graph.
"""

from __future__ import annotations

import os
from pathlib import Path

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
        from onnx import TensorProto, numpy_helper

        if not tensor.HasField("raw_data"):
            # make_tensor's typed fields (int32_data for UINT4, ...) -> packed raw bytes
            tensor = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
        data = tensor.raw_data
        if len(data) < INLINE_BELOW_BYTES:
            return tensor
        alignment = MAP_ALIGNMENT if len(data) >= MAP_FROM_BYTES else SMALL_ALIGNMENT
        padding = -self.offset % alignment
        if padding:
            self._file.write(b"\0" * padding)
            self.offset += padding
        self._file.write(data)
        external = TensorProto()
        external.name = tensor.name
        external.data_type = tensor.data_type
        external.dims.extend(tensor.dims)
        external.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(self.offset)),
                           ("length", str(len(data)))):
            entry = external.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(data)
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
