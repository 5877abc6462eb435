"""Check that a safetensors checkpoint holds exactly the tensors its config.json describes,
before a byte of weights is read.

transformers initialises a tensor the checkpoint lacks at random, and only logs it; a
compressed artifact saved from that model is a wrong model that exits 0. So the headers
(names, shapes, dtypes: models/safetensors_check.py) are compared with the parameters of the
config's skeleton, built on the meta device (no memory, milliseconds), and any difference
is one ModelError that names the tensor and the file. A sharded checkpoint is read through
its `model.safetensors.index.json`, which must be JSON, name only shards that exist, and
agree with what each shard holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from models.errors import ModelError
from models.json_file import read_json_object
from models.safetensors_check import FLOAT_DTYPES, read_safetensors_layout

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_RESTORE = "restore the checkpoint (re-download or re-save it)"
# Old Llama checkpoints saved the RoPE table, which transformers now recomputes.
_ALWAYS_IGNORED = (r"rotary_emb\.inv_freq$",)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as its safetensors header describes it."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    # Absolute byte range [begin, end) of the tensor in `file`, so a lazy reader can map
    # just these bytes (models/lazy/safetensors_source.py); (0, 0) when not known.
    offsets: tuple[int, int] = (0, 0)


def read_checkpoint_headers(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of directory `path`'s checkpoint (the file transformers would read:
    model.safetensors, else the shards of the index), each file structurally checked."""
    files, weight_map = _checkpoint_files(path)
    tensors: dict[str, StoredTensor] = {}
    for file in files:
        layout = read_safetensors_layout(file)
        for name, entry in layout.entries.items():
            if name in tensors:
                raise ModelError(f"{path}: tensor {name!r} is stored in both "
                                 f"{tensors[name].file.name} and {file.name}: {_RESTORE}")
            begin, end = entry["data_offsets"]
            tensors[name] = StoredTensor(file, entry["dtype"], tuple(entry["shape"]),
                                         (layout.data_start + begin, layout.data_start + end))
    if weight_map is not None:
        _check_index_agrees(path, weight_map, tensors)
    return tensors


def _checkpoint_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    # A broken index is refused even beside model.safetensors (which transformers prefers):
    # it means the directory is not what its writer left.
    weight_map = _read_index(path / INDEX_FILE) if (path / INDEX_FILE).is_file() else None
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE], None
    if weight_map is not None:
        shards = sorted(set(weight_map.values()))
        missing = [shard for shard in shards if not (path / shard).is_file()]
        if missing:
            raise ModelError(f"{path}: {INDEX_FILE} names {len(missing)} shard(s) that are "
                             f"missing: restore the shard {', '.join(missing[:3])} (re-download "
                             "the checkpoint)")
        return [path / shard for shard in shards], weight_map
    others = sorted(p.name for p in path.glob("*.safetensors"))
    if not others:
        raise ModelError(f"{path} holds no *.safetensors weights (no {SINGLE_FILE}, no "
                         f"{INDEX_FILE}): save the model with safetensors, or pass the "
                         "folder that holds them")
    raise ModelError(f"{path} holds {', '.join(others[:3])} but neither {SINGLE_FILE} nor "
                     f"{INDEX_FILE}: restore the index of the shards, or name a single "
                     f"file {SINGLE_FILE}")


def _read_index(index: Path) -> dict[str, str]:
    fix = f"restore the original {INDEX_FILE}"
    weight_map = read_json_object(index, fix).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index} has no \"weight_map\" of tensor names to shards: {fix}")
    for name, shard in weight_map.items():
        # A shard is a file beside the index: a path could make the loader read any file.
        if (not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", "..")
                or not shard.endswith(".safetensors")):
            raise ModelError(f"{index} maps {name!r} to {json.dumps(shard)}, which is not a "
                             f".safetensors file name in the same directory: {fix}")
    return weight_map


def _check_index_agrees(path: Path, weight_map: dict[str, str],
                        tensors: dict[str, StoredTensor]) -> None:
    for name, shard in weight_map.items():
        stored = tensors.get(name)
        if stored is None or stored.file.name != shard:
            raise ModelError(f"{path}: {INDEX_FILE} puts tensor {name!r} in {shard}, which "
                             f"lacks it: restore the shard {shard} (or the index)")
    unlisted = sorted(set(tensors) - set(weight_map))
    if unlisted:
        raise ModelError(f"{path}: {tensors[unlisted[0]].file.name} holds {unlisted[0]!r}, "
                         f"which {INDEX_FILE} does not list: restore the original index")


@dataclass(frozen=True)
class ExpectedTensor:
    """A tensor the config's model needs; `tied_to` names others that share its storage."""

    shape: tuple[int, ...]
    floating: bool
    tied_to: tuple[str, ...]


@dataclass(frozen=True)
class Skeleton:
    """What the model a config builds expects from a checkpoint."""

    tensors: dict[str, ExpectedTensor]
    # Regexes of checkpoint names transformers drops without complaint.
    ignored: tuple[str, ...]
    # The base model's attribute name ("model"): base-model checkpoints omit it.
    prefix: str


def config_skeleton(config) -> Skeleton:
    """The tensors of the causal LM `config` builds, on the meta device (no memory).
    Exposed for loaders of other layouts (the quantized loader)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    names_of: dict[int, list[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    expected = {}
    for name, tensor in skeleton.state_dict(keep_vars=True).items():
        tied = tuple(n for n in names_of.get(id(tensor), [name]) if n != name)
        expected[name] = ExpectedTensor(tuple(tensor.shape), tensor.is_floating_point(), tied)
    ignored = tuple(getattr(skeleton, "_keys_to_ignore_on_load_unexpected", None) or ())
    return Skeleton(expected, ignored + _ALWAYS_IGNORED, skeleton.base_model_prefix or "")


def check_tensors_match_config(path: Path, config,
                               tensors: dict[str, StoredTensor]) -> None:
    """Refuse a checkpoint that lacks a tensor, has one of the wrong shape or dtype, or holds
    tensors the config does not describe. Families whose checkpoints transformers converts
    on load (fused experts: Mixtral) are left to `check_loading_info`."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    if get_checkpoint_conversion_mapping(config.model_type) is not None:
        return
    skeleton = config_skeleton(config)
    expected, ignored = skeleton.tensors, skeleton.ignored
    tensors = _with_base_prefix(tensors, skeleton)
    where = _describe_files(path, tensors)
    missing = [name for name, spec in expected.items() if name not in tensors
               and not any(t in tensors for t in spec.tied_to)]
    if missing:
        raise ModelError(f"{where} lacks {len(missing)} tensor(s) that config.json needs "
                         f"({', '.join(missing[:3])}): {_RESTORE}")
    for name, stored in tensors.items():
        spec = expected.get(name)
        if spec is None:
            if not any(re.search(pattern, name) for pattern in ignored):
                raise ModelError(f"{stored.file} holds tensor {name!r}, which config.json does "
                                 "not describe: restore the config.json that matches the "
                                 "checkpoint")
        elif stored.shape != spec.shape:
            raise ModelError(f"{stored.file}: tensor {name!r} has shape {list(stored.shape)} "
                             f"but config.json needs {list(spec.shape)}: {_RESTORE}, or the "
                             "config.json that matches it")
        elif spec.floating and stored.dtype not in FLOAT_DTYPES:
            raise ModelError(f"{stored.file}: tensor {name!r} is stored as {stored.dtype}, not "
                             f"a floating-point type: {_RESTORE}")


def _with_base_prefix(tensors: dict[str, StoredTensor],
                      skeleton: Skeleton) -> dict[str, StoredTensor]:
    """A base-model checkpoint (`LlamaModel`) names `layers.0...` where the causal LM has
    `model.layers.0...`; transformers adds the prefix on load, and so does this check."""
    prefix = skeleton.prefix
    if not prefix or any(name.startswith(f"{prefix}.") for name in tensors):
        return tensors
    return {name if name in skeleton.tensors else f"{prefix}.{name}": stored
            for name, stored in tensors.items()}


def _describe_files(path: Path, tensors: dict[str, StoredTensor]) -> str:
    files = sorted({stored.file.name for stored in tensors.values()})
    if len(files) == 1:
        return str(path / files[0])
    return f"{path} (shards of {INDEX_FILE})"


def check_loading_info(source: str, info: dict, tied: bool) -> None:
    """After `from_pretrained(..., output_loading_info=True)`: the same refusal for what
    transformers itself reports (families it converts on load, GGUF files)."""
    missing = [k for k in info.get("missing_keys", ()) if not (tied and k == "lm_head.weight")]
    if missing:
        names = ", ".join(sorted(missing)[:3])
        raise ModelError(f"{source} lacks {len(missing)} tensor(s) that its config needs "
                         f"({names}): {_RESTORE}")
    unexpected = [k for k in info.get("unexpected_keys", ())
                  if not any(re.search(pattern, k) for pattern in _ALWAYS_IGNORED)]
    if unexpected:
        raise ModelError(f"{source} holds tensor(s) its config does not describe "
                         f"({', '.join(sorted(unexpected)[:3])}): {_RESTORE}")
    mismatched = info.get("mismatched_keys") or ()
    if mismatched:
        first = sorted(mismatched)[0]
        raise ModelError(f"{source}: tensor {first[0] if isinstance(first, tuple) else first!r}"
                         f" has the wrong shape for its config: {_RESTORE}")
