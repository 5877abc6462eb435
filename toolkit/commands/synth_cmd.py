"""`toolkit synth SHAPE --out DIR`: write a random-weight checkpoint of a large shape
(`toolkit models` lists them), to measure streaming compression of 3B-7B models on a
machine that holds none of their weights."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from models.large_shapes import format_params, shape_named
from models.synthetic_checkpoint import DEFAULT_MAX_SHARD_BYTES, write_synthetic_checkpoint
from toolkit.commands.common import positive_int, seed_arg
from toolkit.output_paths import shown

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write a random-weight checkpoint of a large model shape",
        description="Write a Hugging Face checkpoint (config, SmolLM2 tokenizer, safetensors "
                    "shards and index) of a registered large shape with random weights, one "
                    "chunk at a time (memory stays far below the model's size). The "
                    "weights are deterministic in --seed. `toolkit models` lists the shapes.")
    p.add_argument("shape", help="a shape name from `toolkit models` (e.g. afm-3b)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the checkpoint folder to create")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                   help="weight type in the shards (default: %(default)s)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the random weights (default: %(default)s)")
    p.add_argument("--layers", type=positive_int, metavar="N",
                   help="write N blocks instead of the shape's own count (benchmarks)")
    p.add_argument("--max-shard-bytes", type=positive_int, default=DEFAULT_MAX_SHARD_BYTES,
                   metavar="BYTES", help="largest shard file (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    shape = shape_named(args.shape).with_layers(args.layers)  # ModelError names the shapes
    bar = _ByteBar() if not args.quiet else None
    start = time.perf_counter()
    try:
        write_synthetic_checkpoint(shape, args.out, dtype=DTYPES[args.dtype], seed=args.seed,
                                   max_shard_bytes=args.max_shard_bytes, layers=None,
                                   overwrite=args.overwrite, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    total = shape.param_count() * DTYPES[args.dtype].itemsize
    shards = len(list(args.out.glob("model-*-of-*.safetensors")))
    print(f"synth {shape.name}: {format_params(shape.param_count())} params ({shape.layers} "
          f"layers, {args.dtype}), {total / 1e9:.2f} GB in {shards} shard(s), "
          f"{seconds:.1f} s ({total / 1e6 / max(seconds, 1e-9):.0f} MB/s) -> {shown(args.out)}")
    return 0


class _ByteBar:
    """A tqdm bar in bytes for the generator's `(written, total)` callback."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, written: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="synth", unit="B", unit_scale=True,
                             dynamic_ncols=True)
        self._bar.update(written - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
