"""Shorter tensor names in a .tflite: litert-torch names every tensor after its module
path ("export.vision.PixelInput/models.portrait.PortraitSegmenter_module/...;..."),
about 300 bytes per tensor. The interpreter never reads them (signatures and ops refer
to tensors by index), yet on a small CNN they were 67 KB of a 216 KB int8 file, more
than its int8 weights. Every tensor except the graph's inputs and outputs (which apps
may look up by name) is renamed "t<index>"; nothing else in the file changes.
"""

from __future__ import annotations

import os
from pathlib import Path


def shorten_tensor_names(path: Path) -> int:
    """Rewrite `path` in place; returns the bytes saved."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    for graph in model.subgraphs:
        keep = {int(i) for i in graph.inputs} | {int(i) for i in graph.outputs}
        for index, tensor in enumerate(graph.tensors):
            if index not in keep:
                tensor.name = f"t{index}".encode()
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    compact = bytes(builder.Output())
    staged = path.with_name(path.name + ".partial")
    staged.write_bytes(compact)
    os.replace(staged, path)
    return len(data) - len(compact)
