"""Does channel pruning make the exported portrait segmenter faster? Dense vs channel-
pruned portrait-256 (untrained weights: speed does not depend on them), each exported to
ONNX with the pixel normalisation folded in (export.vision.export_vision) and timed at
batch 1 on onnxruntime's CPU provider with one thread, interleaved so that a drifting
shared machine hits every model alike (toolkit.bench.measure_interleaved).

    .venv/bin/python benchmarks/channel_prune_latency.py [--sparsity 0.25 0.5 0.75]
        [--model portrait-256] [--json results.json]

Criterion l1-filter (weights only, no data needed), uniform allocation, widths rounded
to multiples of 8: the widths, not which channels, decide the speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

import compress
from compress.structured import ChannelPruneConfig
from export.vision import Preprocess, export_vision
from models import create_model
from models.portrait import count_flops
from toolkit.bench import measure_interleaved


def onnx_runner(path: Path, shape: tuple[int, ...]):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pixels = np.random.default_rng(0).uniform(0, 255, size=shape).astype(np.float32)
    return lambda: session.run(None, {name: pixels})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="portrait-256")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5])
    parser.add_argument("--min-runs", type=int, default=30)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, runners = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in [0.0, *args.sparsity]:
            loaded = create_model(args.model)
            module = loaded.module
            if sparsity:
                compress.apply(module, ChannelPruneConfig(criterion="l1-filter",
                                                          sparsity=sparsity), None)
            name = "dense" if not sparsity else f"channel-prune {sparsity:g}"
            spec = loaded.vision
            result = export_vision(module, spec.shape, "onnx", Path(tmp) / f"{sparsity}.onnx",
                                   preprocess=Preprocess(spec.mean, spec.std))
            rows[name] = {"sparsity": sparsity, "file_bytes": result.path.stat().st_size,
                          "params": sum(p.numel() for p in module.parameters()),
                          "mflops": count_flops(module) / 1e6,
                          "hidden_channels": list(module.config.hidden_channels)}
            runners[name] = onnx_runner(result.path, tuple(result.example.shape))
        samples = measure_interleaved(runners, warmup=3, min_runs=args.min_runs,
                                      min_seconds=args.min_seconds)
    dense = statistics.median(samples["dense"])
    for name, row in rows.items():
        row["p50_ms"] = 1000 * statistics.median(samples[name])
        row["mean_ms"] = 1000 * statistics.fmean(samples[name])
        row["runs"] = len(samples[name])
        row["speedup_p50"] = dense / statistics.median(samples[name])
        print(f"{name:22s} {row['file_bytes'] / 1e6:6.2f} MB  {row['params']:8d} params  "
              f"{row['mflops']:6.1f} MFLOPs  p50 {row['p50_ms']:6.2f} ms  mean "
              f"{row['mean_ms']:6.2f} ms  x{row['speedup_p50']:.2f}  ({row['runs']} runs)")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": 1, "batch": 1,
                                         "runtime": "onnxruntime CPU", "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
