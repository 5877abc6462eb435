"""A small helper for writing ONNX graphs by hand: unique value names, constants, and
initializers that go straight to an external data file (export.onnx.external_data)."""

from __future__ import annotations

import numpy as np


class GraphBuilder:
    """Collects nodes and initializers; `writer` (ExternalDataWriter or None) receives
    every initializer as it is added, so weights leave memory as soon as they are made."""

    def __init__(self, writer=None) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self.writer = writer
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, *,
           outputs: int = 1, domain: str = "", name: str | None = None, **attributes):
        """Add one node; returns its output name (or names, when `outputs` > 1)."""
        from onnx import helper

        hint = hint or op_type.lower()
        names = [self.fresh(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name or names[0],
                                           domain=domain, **attributes))
        return names[0] if outputs == 1 else names

    def node(self, node) -> None:
        """Add a node made elsewhere (its outputs named by the maker)."""
        self.nodes.append(node)

    def initializer(self, tensor) -> str:
        """Add an onnx.TensorProto; returns its name."""
        if self.writer is not None:
            tensor = self.writer.add(tensor)
        self.initializers.append(tensor)
        return tensor.name

    def array(self, name: str, array: np.ndarray) -> str:
        """Add a numpy array as an initializer named `name`."""
        from onnx import numpy_helper

        # (np.ascontiguousarray would turn a 0-d scalar into shape [1])
        array = np.asarray(array, order="C")
        if self.writer is not None:
            self.initializers.append(self.writer.add_array(name, array))
            return name
        return self.initializer(numpy_helper.from_array(array, name))

    def row_blocks(self, name: str, shape: tuple[int, ...], blocks) -> str:
        """A float32 initializer of `shape` given as consecutive row blocks (numpy
        arrays), e.g. a large embedding converted to float32 one block at a time."""
        if self.writer is None:
            return self.array(name, np.concatenate(list(blocks)))
        from onnx import TensorProto

        nbytes = 4 * int(np.prod(shape))
        chunks = (memoryview(np.asarray(b, dtype=np.float32, order="C")).cast("B")
                  for b in blocks)
        self.initializers.append(self.writer.add_chunks(name, TensorProto.FLOAT, list(shape),
                                                        chunks, nbytes))
        return name

    def const(self, values, dtype=np.int64, hint: str = "const") -> str:
        """A small constant (shapes, axes, scalars) as an initializer."""
        return self.array(self.fresh(hint), np.asarray(values, dtype=dtype))
