"""Put the artifact's compressed weights into an exported ONNX graph.

The exporter writes every linear as MatMul(activation, `<name>.weight_t`) with a float
initializer (see export.llm.decoder). For each layer the artifact stores packed, that
MatMul and its float weight are replaced by the nodes `export.onnx.weights` builds from
the packed codes: the file carries the compression as it was made, nothing re-quantized.
"""

from __future__ import annotations

from export.onnx.weights import compressed_weight
from export.records import LayerRecord


def carry_compression(model, weights: dict[str, object]) -> tuple[list[LayerRecord],
                                                                   list[LayerRecord]]:
    """Rewrite `model` (onnx.ModelProto) in place. `weights` maps an initializer name
    (`<export name>.weight_t`) to (source name, packed weight). Returns (carried, dropped):
    dropped are the layers whose packed form no ONNX op carries (kept as float)."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    carried, dropped = [], []
    new_nodes, used, found = [], set(), set()
    for node in graph.node:
        target = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if target not in weights:
            new_nodes.append(node)
            continue
        found.add(target)
        source, packed = weights[target]
        built = compressed_weight(packed, node.input[0], node.output[0], source)
        if built is None:
            dropped.append(LayerRecord(source, "float: no ONNX op carries "
                                               f"{packed.meta()}"))
            new_nodes.append(node)
            continue
        new_nodes.extend(built.nodes)
        graph.initializer.extend(built.initializers)
        carried.append(LayerRecord(source, built.carried_as))
        used.add(target)
    missing = sorted(set(weights) - found)
    if missing:
        raise RuntimeError(f"compressed weights not found in the exported graph: {missing[:3]}")
    del graph.node[:]
    graph.node.extend(new_nodes)
    for name in used:
        # A float weight another node still reads (none should) would be kept.
        if not any(name in n.input for n in graph.node):
            graph.initializer.remove(initializers[name])
    _ensure_opset(model, "com.microsoft", 1)
    return carried, dropped


def _ensure_opset(model, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version
