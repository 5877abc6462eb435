"""Write a random-weight Hugging Face checkpoint of a registered large shape
(models/large_shapes.py), so streaming compression of 3B-7B models can be built and
measured on machines that hold none of their weights.

The output is what `save_pretrained` writes for a sharded model, readable by
transformers, by `models.load_model(DIR)` and by the lazy shard readers:
config.json, generation_config.json, SmolLM2's tokenizer files, shards
`model-0000i-of-0000N.safetensors`, `model.safetensors.index.json`, and
`synthetic.json` saying the weights are random and how they were drawn. It is always
sharded with an index, even when one shard holds everything (where `save_pretrained`
would write a lone `model.safetensors`), so readers of sharded checkpoints are exercised.

Memory: the whole model is never held, nor even a whole shard. Each shard's header is
computed from the shapes alone, then every tensor is drawn and written in row chunks of at
most CHUNK_ELEMENTS float32 values (16 MB), so a 7B model is written in well under 100 MB
beyond the Python process itself.

Determinism: each tensor is drawn from its own torch.Generator seeded from sha256(seed,
tensor name), in chunks whose size depends only on the tensor's shape, so the bytes of a
tensor are the same across runs, shard sizes and tensor order for one torch version on
one kind of CPU (torch's normal sampler has vectorised and scalar paths that need not agree
in the last bit). Changing CHUNK_ELEMENTS changes the values.

Values: linears and embeddings ~ N(0, 0.02^2), transformers' `initializer_range`; the
two projections that write into the residual stream (o_proj, down_proj) ~ N(0, (0.02 /
sqrt(2 L))^2), GPT-2's scaling by 1/sqrt(N) for N = 2 L residual branches (Radford et al.
2019), so the residual stream's variance stays near its input's over depth; RMSNorm
scales are ones. A forward pass then gives finite logits of a few tenths to one in std.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from models.checkpoint_check import INDEX_FILE
from models.errors import ModelError
from models.large_shapes import SMOLLM2_BOS_ID, SMOLLM2_EOS_ID, LargeShape
from models.staging import make_staging_dir, sweep_stale_staging
from models.synthetic_tokenizer import copy_tokenizer

SYNTHETIC_FILE = "synthetic.json"
INIT_STD = 0.02
CHUNK_ELEMENTS = 1 << 22
DEFAULT_MAX_SHARD_BYTES = 2_000_000_000
_DTYPE_NAMES = {torch.bfloat16: ("BF16", "bfloat16"), torch.float16: ("F16", "float16"),
                torch.float32: ("F32", "float32")}
_RESIDUAL_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
_NORMS = ("layernorm.weight", "model.norm.weight")
Progress = Callable[[int, int], None]  # (bytes written so far, total bytes)


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the checkpoint: its name as LlamaForCausalLM's state_dict has it."""

    name: str
    shape: tuple[int, ...]
    std: float | None  # None: RMSNorm scale, all ones

    def nbytes(self, dtype: torch.dtype) -> int:
        return math.prod(self.shape) * dtype.itemsize


def planned_tensors(shape: LargeShape) -> list[PlannedTensor]:
    """Every tensor of `shape`'s causal LM, in the order blocks are read (embeddings,
    block 0, ..., final norm, untied head), so a block's tensors share few shards."""
    d, f = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.attention_head_dim, shape.kv_heads * shape.attention_head_dim
    residual_std = INIT_STD / math.sqrt(2 * shape.layers)
    tensors = [PlannedTensor("model.embed_tokens.weight", (shape.vocab, d), INIT_STD)]
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        tensors += [
            PlannedTensor(p + "input_layernorm.weight", (d,), None),
            PlannedTensor(p + "self_attn.q_proj.weight", (q, d), INIT_STD),
            PlannedTensor(p + "self_attn.k_proj.weight", (kv, d), INIT_STD),
            PlannedTensor(p + "self_attn.v_proj.weight", (kv, d), INIT_STD),
            PlannedTensor(p + "self_attn.o_proj.weight", (d, q), residual_std),
            PlannedTensor(p + "post_attention_layernorm.weight", (d,), None),
            PlannedTensor(p + "mlp.gate_proj.weight", (f, d), INIT_STD),
            PlannedTensor(p + "mlp.up_proj.weight", (f, d), INIT_STD),
            PlannedTensor(p + "mlp.down_proj.weight", (d, f), residual_std),
        ]
    tensors.append(PlannedTensor("model.norm.weight", (d,), None))
    if not shape.tied:
        tensors.append(PlannedTensor("lm_head.weight", (shape.vocab, d), INIT_STD))
    return tensors


def plan_shards(tensors: list[PlannedTensor], dtype: torch.dtype,
                max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Tensors packed in order into shards of at most `max_shard_bytes` (a tensor larger
    than that gets a shard of its own, as transformers' `save_pretrained` does)."""
    if max_shard_bytes <= 0:
        raise ModelError(f"max_shard_bytes = {max_shard_bytes} must be positive")
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = tensor.nbytes(dtype)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from (seed, tensor name): independent streams per tensor."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def tensor_chunks(tensor: PlannedTensor, seed: int, dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """The tensor's values in row chunks of <= CHUNK_ELEMENTS, drawn in float32, cast."""
    if tensor.std is None:
        yield torch.ones(tensor.shape, dtype=dtype)
        return
    rows, cols = tensor.shape[0], math.prod(tensor.shape[1:])
    step = max(1, CHUNK_ELEMENTS // cols)
    generator = torch.Generator().manual_seed(tensor_seed(seed, tensor.name))
    for start in range(0, rows, step):
        chunk = torch.empty((min(step, rows - start), *tensor.shape[1:]), dtype=torch.float32)
        chunk.normal_(0.0, tensor.std, generator=generator)
        yield chunk.to(dtype)


def safetensors_header(shard: list[PlannedTensor], dtype: torch.dtype) -> bytes:
    """The 8-byte length and JSON header of a safetensors file holding `shard` in order,
    padded with spaces to a multiple of 8 bytes as the format's writer does."""
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in shard:
        end = offset + tensor.nbytes(dtype)
        entries[tensor.name] = {"dtype": _DTYPE_NAMES[dtype][0], "shape": list(tensor.shape),
                                "data_offsets": [offset, end]}
        offset = end
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % 8)
    return struct.pack("<Q", len(header)) + header


def write_synthetic_checkpoint(shape: LargeShape, out_dir: Path, *,
                               dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                               layers: int | None = None, overwrite: bool = False,
                               progress: Progress | None = None) -> Path:
    """Write `shape` (with `layers` blocks when given) as a random-weight HF checkpoint
    into `out_dir`, staged in a sibling folder and renamed into place at the end."""
    if dtype not in _DTYPE_NAMES:
        raise ModelError(f"dtype {dtype} is not one of bfloat16, float16, float32")
    if sys.byteorder != "little":  # safetensors data is little-endian; tensors are native
        raise ModelError("synthetic checkpoints are written on little-endian machines only")
    shape = shape.with_layers(layers)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    shards = plan_shards(planned_tensors(shape), dtype, max_shard_bytes)
    total = sum(t.nbytes(dtype) for shard in shards for t in shard)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(out_dir.parent, total)
    sweep_stale_staging(out_dir.parent)
    staging = make_staging_dir(out_dir)
    try:
        _write_metadata(staging, shape, dtype, seed)
        copy_tokenizer(staging, shape.vocab)
        written = 0
        weight_map: dict[str, str] = {}
        for i, shard in enumerate(shards, start=1):
            name = shard_name(i, len(shards))
            written = _write_shard(staging / name, shard, dtype, seed, written, total, progress)
            weight_map.update({t.name: name for t in shard})
        _write_json(staging / INDEX_FILE,
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_shard(path: Path, shard: list[PlannedTensor], dtype: torch.dtype, seed: int,
                 written: int, total: int, progress: Progress | None) -> int:
    with path.open("wb") as handle:
        handle.write(safetensors_header(shard, dtype))
        for tensor in shard:
            for chunk in tensor_chunks(tensor, seed, dtype):
                handle.write(chunk.contiguous().view(torch.uint8).numpy().data)
                written += chunk.numel() * dtype.itemsize
                if progress is not None:
                    progress(written, total)
    return written


def _write_metadata(staging: Path, shape: LargeShape, dtype: torch.dtype, seed: int) -> None:
    dtype_name = _DTYPE_NAMES[dtype][1]
    _write_json(staging / "config.json", shape.hf_config(torch_dtype=dtype_name))
    _write_json(staging / "generation_config.json",
                {"bos_token_id": SMOLLM2_BOS_ID, "eos_token_id": SMOLLM2_EOS_ID,
                 "pad_token_id": SMOLLM2_EOS_ID})
    _write_json(staging / SYNTHETIC_FILE, {
        "note": "random weights, not a trained model: for memory and speed measurements",
        "shape": shape.name, "layers": shape.layers, "dtype": dtype_name, "seed": seed,
        "init": {"std": INIT_STD, "o_proj_down_proj_std": INIT_STD / math.sqrt(2 * shape.layers),
                 "norms": 1.0, "seed_per_tensor": "sha256(seed, name)",
                 "chunk_elements": CHUNK_ELEMENTS},
        "source": shape.source})


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ModelError(f"{out_dir} exists and is not a directory: choose another output path")
    if out_dir.exists() and not overwrite:
        raise ModelError(f"{out_dir} already exists: choose a new path or pass overwrite "
                         "(--overwrite)")


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed + (64 << 20):
        raise ModelError(f"{folder} has {free / 1e9:.1f} GB free but the checkpoint needs "
                         f"{needed / 1e9:.1f} GB: free space, pick another folder, or use "
                         "fewer layers (--layers)")


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename `staging` to `out_dir`; an existing `out_dir` (overwrite) is first renamed
    aside and removed only once the new one is in place."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = make_staging_dir(out_dir, "old")
    os.replace(out_dir, old)  # onto the empty folder mkdtemp made
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
