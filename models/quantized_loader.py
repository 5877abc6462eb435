"""Load an Edge Toolkit artifact whose linears are stored packed (models.qformat).

The file's safetensors metadata names the quantized linears and their layout: format
"edge-quant/2" is a compressed-tensors checkpoint (`model.safetensors`, which transformers
loads too), "edge-quant/1" Edge Toolkit's own packing (older artifacts in
`model.safetensors`, and artifacts transformers cannot load in `EDGE_ONLY_FILE`:
models/families/llm_weights.py). The model is built from config.json, every quantized
linear gets its dequantized weight, and the packed form is kept on the LoadedModel (same
codes, scales and zero points whichever the format) for exporters that write low-bit files.

Artifacts written block by block (models/lazy/shard_writer.py) are sharded: compressed-
tensors shards behind `model.safetensors.index.json`, or Edge Toolkit shards
`edge_toolkit_quantized-0000k-of-0000N.safetensors` behind `EDGE_INDEX_FILE`. Each shard's
metadata holds the layout of the linears in that shard; the loader merges them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from models.errors import ModelError
from models.json_file import read_json_object
from models.qformat import QUANT_METADATA_KEY, quantized_from_state
from models.qformat.compressed_tensors import (
    CT_METHOD,
    CT_SUFFIXES,
    quantized_from_ct_state,
)
from models.qformat.layout import CT_LAYOUT_FORMAT, read_layout
from models.safetensors_check import check_safetensors_file

EDGE_ONLY_FILE = "edge_toolkit_quantized.safetensors"
EDGE_INDEX_FILE = "edge_toolkit_quantized.safetensors.index.json"
_EDGE_SUFFIXES = (".qweight", ".scales", ".qzeros", ".input_scale", ".qindices", ".lut")
_RECREATE = "re-create the artifact with `toolkit compress` or `toolkit run`"


def edge_only_weights(path: Path) -> list[Path]:
    """The packed weights files that only Edge Toolkit reads, when directory `path` holds
    them (`EDGE_ONLY_FILE`, else the shards of `EDGE_INDEX_FILE`; each checked like any
    safetensors file), else []."""
    file = path / EDGE_ONLY_FILE
    if file.is_file():
        check_safetensors_file(file)
        files = [file]
    elif (path / EDGE_INDEX_FILE).is_file():
        files = edge_shards(path)
    else:
        return []
    if quantization_layout(files) is None:
        raise ModelError(f"{files[0]} has no quantization layout in its metadata: {_RECREATE}")
    return files


def edge_shards(path: Path) -> list[Path]:
    """The shards `EDGE_INDEX_FILE` of directory `path` names, after checking that the
    index is JSON, names only plain .safetensors files beside it that exist, and agrees
    with what each shard holds (a tensor in no shard, or in another, is refused)."""
    index = path / EDGE_INDEX_FILE
    fix = f"restore {EDGE_INDEX_FILE} and its shards, or {_RECREATE}"
    weight_map = read_json_object(index, fix).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index} has no \"weight_map\" of tensor names to shards: {fix}")
    for name, shard in weight_map.items():
        # A shard is a file beside the index: a path could make the loader read any file.
        if (not isinstance(shard, str) or Path(shard).name != shard
                or not shard.endswith(".safetensors") or shard.startswith(".")):
            raise ModelError(f"{index} maps {name!r} to {json.dumps(shard)}, which is not a "
                             f".safetensors file name in the same directory: {fix}")
    shards = sorted(set(weight_map.values()))
    missing = [shard for shard in shards if not (path / shard).is_file()]
    if missing:
        raise ModelError(f"{path}: {EDGE_INDEX_FILE} names {len(missing)} missing shard(s) "
                         f"({', '.join(missing[:3])}): {fix}")
    held: dict[str, str] = {}
    for shard in shards:
        for name in check_safetensors_file(path / shard):
            held[name] = shard
    for name, shard in weight_map.items():
        if held.get(name) != shard:
            raise ModelError(f"{path}: {EDGE_INDEX_FILE} puts tensor {name!r} in {shard}, "
                             f"which lacks it: {fix}")
    unlisted = sorted(set(held) - set(weight_map))
    if unlisted:
        raise ModelError(f"{path}: {held[unlisted[0]]} holds {unlisted[0]!r}, which "
                         f"{EDGE_INDEX_FILE} does not list: {fix}")
    return [path / shard for shard in shards]


def shard_layouts(files: list[Path]) -> dict[Path, tuple[str, dict]]:
    """file -> (layout format, layer name -> meta) for each file whose metadata has a
    quantization layout (a shard holding only float tensors has none). Reads headers only."""
    layouts = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            text = (handle.metadata() or {}).get(QUANT_METADATA_KEY)
        if text is not None:
            try:
                layouts[file] = read_layout(text)
            except ValueError as exc:
                raise ModelError(f"{file}: {exc}: {_RECREATE}") from None
    return layouts


def merge_layouts(layouts: dict[Path, tuple[str, dict]]) -> tuple[str, dict]:
    """One (format, layers) from the per-shard layouts: every shard must use the same
    format, and no linear may be described by two shards."""
    formats = sorted({fmt for fmt, _ in layouts.values()})
    if len(formats) > 1:
        first = next(iter(layouts))
        raise ModelError(f"{first.parent}: shards mix quantization formats "
                         f"({', '.join(formats)}): {_RECREATE}")
    layers: dict[str, dict] = {}
    owner: dict[str, Path] = {}
    for file, (_, part) in layouts.items():
        for name, meta in part.items():
            if name in layers:
                raise ModelError(f"{file}: linear {name!r} is described by both its layout "
                                 f"and {owner[name].name}'s: {_RECREATE}")
            layers[name], owner[name] = meta, file
    return formats[0], layers


def quantization_layout(files: list[Path]) -> tuple[str, dict] | None:
    """(layout format, layer name -> meta) recorded in the files' metadata, merged over
    shards, or None for plain float weights."""
    layouts = shard_layouts(files)
    if layouts:
        return merge_layouts(layouts)
    if files:
        _refuse_foreign_compressed_tensors(files[0].parent)
    return None


def _refuse_foreign_compressed_tensors(path: Path) -> None:
    """A compressed-tensors checkpoint Edge Toolkit did not write (no layout in its
    metadata) has no float weights for the plain loader: say so, not "tensors missing"."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # the config checks name what is wrong with it
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(quantization, dict) and quantization.get("quant_method") == CT_METHOD:
        raise ModelError(
            f"{path} is a compressed-tensors checkpoint that Edge Toolkit did not write, "
            "which it does not read: load it with transformers (from_pretrained(DIR, "
            "quantization_config=CompressedTensorsConfig(dequantize=True))), save_pretrained "
            "a float copy and pass that")


def packed_reader(fmt: str):
    """(rebuild function (tensors, layers) -> {name: QuantizedWeight}, the suffixes of a
    packed linear's tensors) for layout format `fmt`."""
    if fmt == CT_LAYOUT_FORMAT:
        return quantized_from_ct_state, CT_SUFFIXES
    return quantized_from_state, _EDGE_SUFFIXES


def load_quantized_module(path: Path, files: list[Path], layout: tuple[str, dict],
                          dtype: torch.dtype = torch.float32):
    """(module, packed weights) for a directory whose linears are stored packed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    # The module holds float weights: a `quantization_config` kept on it would be written
    # again by save_pretrained over float tensors.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    module = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    fmt, layers = layout
    read, suffixes = packed_reader(fmt)
    try:
        quantized = read(tensors, layers)
        for name, packed in quantized.items():
            tensors[f"{name}.weight"] = packed.dequantize().to(dtype)
    except ValueError as exc:
        raise ModelError(f"{path}: packed weights do not match their layout ({exc}): "
                         f"{_RECREATE}") from None
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()
             if not (k.endswith(suffixes) and k.rsplit(".", 1)[0] in quantized)}
    _load_state(path, module, state)
    return module, quantized


def _load_state(path: Path, module, state: dict[str, torch.Tensor]) -> None:
    result = module.load_state_dict(state, strict=False)
    tied = _tied_names(module)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        problem = (f"missing {missing[0]}" if missing
                   else f"unexpected {result.unexpected_keys[0]}")
        raise ModelError(f"{path}: weights do not fit config.json ({problem}): "
                         "re-create the artifact")
    module.tie_weights()
    module.eval()


def _tied_names(module) -> set[str]:
    """Parameter names that share storage with an earlier one (e.g. lm_head.weight)."""
    seen, tied = set(), set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        pointer = tensor.data_ptr()
        if pointer in seen:
            tied.add(name)
        seen.add(pointer)
    return tied
