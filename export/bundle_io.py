"""The entry points of an exported LLM file as a bundle manifest describes them, read from
the file itself (not from what the exporter meant to write), so an app binds tensors by
the names the file really has.

Every entry point follows the decoder contract of export.llm.decoder, by role:

    inputs:  input_ids [1, T], position [1], past_keys, past_values [L, Hkv, C, D]
    outputs: logits [1, T, V], present_keys, present_values

ONNX has one entry point ("main", T symbolic: "tokens") whose tensor names are the roles,
or, for a per-layer cache (export.onnx.cache_io), one past/present tensor per layer and
role, tagged with its "layer";
a .tflite file has "prefill" (T fixed) and "decode" (T = 1) signatures whose tensors
litert-torch names args_0.. and output_0.. in role order (export.litert.run_llm reads them
the same way). Only the ONNX graph (not its weights) and the .tflite flatbuffer's
signature tables are parsed: no runtime starts, so a file the interpreter would abort on
is still described.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from export.errors import ExportError, require
from export.onnx.cache_io import LLM_METADATA_KEY, PER_LAYER

INPUT_ROLES = ("input_ids", "position", "past_keys", "past_values")
OUTPUT_ROLES = ("logits", "present_keys", "present_values")
CACHE_ROLES = ("past_keys", "past_values", "present_keys", "present_values")
CACHE_DTYPES = ("float32", "float16")
TOKENS = "tokens"  # the symbolic token-count dimension of input_ids and logits
ONNX_ENTRY = "main"
PREFILL, DECODE = "prefill", "decode"


def describe_entry_points(runtime: str, path: Path) -> dict[str, dict]:
    """{entry point: {"inputs": [...], "outputs": [...]}}, each tensor as {"role", "name",
    "dtype", "shape"}, checked against the decoder contract."""
    if runtime == "onnxruntime":
        entries = {ONNX_ENTRY: _onnx_entry(path)}
    elif runtime == "ai-edge-litert":
        entries = _tflite_entries(path)
        if set(entries) != {PREFILL, DECODE}:
            raise ExportError(f"{path.name} has signatures {sorted(entries)}, not prefill and "
                              "decode: export it again with this version of Edge Toolkit")
    else:
        raise ExportError(f"bundles hold ONNX or LiteRT files, not {runtime} ones")
    for name, entry in entries.items():
        check_contract(entry, f"{path.name} ({name})")
    return entries


def _onnx_entry(path: Path) -> dict:
    """The graph's inputs and outputs by role. A per-layer cache file (its
    `edge_toolkit.llm` metadata says so, export.onnx.cache_io) has one past/present
    tensor per layer and role, each tagged with its "layer"."""
    onnx = require("onnx", "onnx", "describing ONNX files")
    from onnx import helper

    model = onnx.load(os.fspath(path), load_external_data=False)
    graph = model.graph
    contract = {}
    for entry in model.metadata_props:
        if entry.key == LLM_METADATA_KEY:
            contract = json.loads(entry.value)

    def tensor(role: str, value, layer: int | None = None) -> dict:
        described = {"role": role, "name": value.name,
                     "dtype": helper.tensor_dtype_to_np_dtype(
                         value.type.tensor_type.elem_type).name,
                     "shape": [d.dim_param or d.dim_value
                               for d in value.type.tensor_type.shape.dim]}
        return described if layer is None else {**described, "layer": layer}

    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if contract.get("cache_layout") != PER_LAYER:
        _count(path, ONNX_ENTRY, len(inputs), len(graph.output))
        return {"inputs": [tensor(r, v) for r, v in zip(INPUT_ROLES, inputs, strict=False)],
                "outputs": [tensor(r, v) for r, v in zip(OUTPUT_ROLES, graph.output,
                                                         strict=False)]}
    roles = {"input_ids": ("input_ids", None), "position": ("position", None),
             "logits": ("logits", None)}
    for role, names in contract["cache_names"].items():
        roles.update({name: (role, layer) for layer, name in enumerate(names)})
    unknown = [v.name for v in [*inputs, *graph.output] if v.name not in roles]
    if unknown:
        raise ExportError(f"{path.name} has tensors {unknown[:3]} its cache contract does not "
                          "name: export it again with this version of Edge Toolkit")
    return {"inputs": [tensor(*roles[v.name][:1], v, roles[v.name][1]) for v in inputs],
            "outputs": [tensor(*roles[v.name][:1], v, roles[v.name][1])
                        for v in graph.output]}


def _tflite_entries(path: Path) -> dict[str, dict]:
    require("ai_edge_litert", "litert", "describing LiteRT files")
    from ai_edge_litert import schema_py_generated as schema

    type_names = {value: name.lower() for name, value in vars(schema.TensorType).items()
                  if not name.startswith("_")}
    model = schema.Model.GetRootAs(path.read_bytes(), 0)

    def tensor(role: str, item, subgraph) -> dict:
        t = subgraph.Tensors(item.TensorIndex())
        return {"role": role, "name": item.Name().decode(),
                "dtype": type_names.get(t.Type(), str(t.Type())),
                "shape": [int(d) for d in t.ShapeAsNumpy()]}

    entries = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        key = sig.SignatureKey().decode()
        subgraph = model.Subgraphs(sig.SubgraphIndex())
        _count(path, key, sig.InputsLength(), sig.OutputsLength())
        outputs = sorted((sig.Outputs(j) for j in range(sig.OutputsLength())),
                         key=lambda item: item.Name())
        entries[key] = {
            "inputs": [tensor(role, sig.Inputs(j), subgraph)
                       for j, role in enumerate(INPUT_ROLES)],
            "outputs": [tensor(role, item, subgraph)
                        for role, item in zip(OUTPUT_ROLES, outputs, strict=True)]}
    return entries


def _count(path: Path, entry: str, inputs: int, outputs: int) -> None:
    if (inputs, outputs) != (len(INPUT_ROLES), len(OUTPUT_ROLES)):
        raise ExportError(f"{path.name} ({entry}) has {inputs} inputs and {outputs} outputs, "
                          f"not the decoder's {len(INPUT_ROLES)} and {len(OUTPUT_ROLES)}: "
                          "it is not an Edge Toolkit LLM export")


def check_contract(entry: dict, where: str) -> None:
    """ExportError unless `entry` is the decoder contract: integer ids [1, T] and position
    [1], float caches of one 4-d shape in and out (one stacked tensor per role, or one per
    layer and role), logits [1, T, V]."""
    by_role: dict[str, list[dict]] = {}
    for t in entry["inputs"] + entry["outputs"]:
        by_role.setdefault(t["role"], []).append(t)
    problems = []
    if not by_role["input_ids"][0]["dtype"].startswith("int") or \
            len(by_role["input_ids"][0]["shape"]) != 2:
        problems.append("input_ids is not an integer [1, T] tensor")
    if by_role["position"][0]["shape"] != [1]:
        problems.append("position is not a [1] tensor")
    cache = by_role["past_keys"][0]
    if len(cache["shape"]) != 4 or any(not isinstance(d, int) for d in cache["shape"]):
        problems.append("the cache is not a fixed [layers, kv_heads, max_context, head_dim]")
    layers = len(by_role["past_keys"])
    for role in CACHE_ROLES:
        tensors = by_role.get(role, [])
        if len(tensors) != layers or any(t["shape"] != cache["shape"]
                                         or t["dtype"] != cache["dtype"] for t in tensors):
            problems.append(f"{role} is not {layers} {cache['dtype']} {cache['shape']}")
    if cache["dtype"] not in CACHE_DTYPES:
        problems.append(f"the cache is {cache['dtype']}, not one of {', '.join(CACHE_DTYPES)}")
    if len(by_role["logits"][0]["shape"]) != 3:
        problems.append("logits is not [1, T, vocab]")
    if problems:
        raise ExportError(f"{where} does not follow the decoder contract ({'; '.join(problems)})"
                          ": export it again with this version of Edge Toolkit")


def contract_summary(entries: dict[str, dict]) -> dict:
    """The manifest's model-level keys from the described entry points: inputs/outputs by
    role with the token dimension symbolic, the cache, max_context, vocab_size, prefill."""
    main = entries.get(ONNX_ENTRY) or entries[DECODE]

    def symbolic(tensor: dict) -> dict:
        shape = list(tensor["shape"])
        if tensor["role"] in ("input_ids", "logits"):
            shape[1] = TOKENS
        return {"name": tensor["role"], "dtype": tensor["dtype"], "shape": shape}

    caches = [t for t in main["inputs"] if t["role"] == "past_keys"]
    cache = caches[0]
    per_layer = "layer" in cache
    # The cache as one logical [layers, kv_heads, max_context, head_dim] array (a
    # per-layer file's tensors are its [1, ...] slices).
    shape = [len(caches), *cache["shape"][1:]] if per_layer else list(cache["shape"])
    logits = next(t for t in main["outputs"] if t["role"] == "logits")
    if ONNX_ENTRY in entries:
        prefill = {"signature": ONNX_ENTRY, "decode_signature": ONNX_ENTRY, "tokens": None,
                   "note": "one graph: any prompt length up to max_context in one call"}
    else:
        ids = next(t for t in entries[PREFILL]["inputs"] if t["role"] == "input_ids")
        prefill = {"signature": PREFILL, "decode_signature": DECODE,
                   "tokens": int(ids["shape"][1]),
                   "note": "fixed length: longer prompts in chunks, the last one padded"}
    return {
        "inputs": [symbolic(t) for t in main["inputs"]],
        "outputs": [symbolic(t) for t in main["outputs"]],
        "cache": {"layout": "[layers, kv_heads, max_context, head_dim]",
                  "shape": shape, "dtype": cache["dtype"],
                  "per_layer": per_layer,
                  "position": "index of the first new token; its keys and values are "
                              "written at position .. position+T-1, present_* feed the next "
                              "call's past_*",
                  **({"note": "one [1, kv_heads, max_context, head_dim] tensor per layer "
                              "(past_key.i / present_key.i ...): bind present to the same "
                              "buffer as past and the model writes only the new rows"}
                     if per_layer else {})},
        "max_context": int(cache["shape"][2]),
        "vocab_size": int(logits["shape"][2]),
        "prefill": prefill,
        "signatures": entries,
    }
