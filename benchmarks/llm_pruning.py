"""Benchmark: pruning SmolLM2-135M with magnitude / Wanda / SparseGPT (+ OWL).

    python benchmarks/llm_pruning.py [--eval-windows all] [--variants a,b,...]

Each variant runs in its own child process (so its peak RSS is its own), on the protocol
of `toolkit compress`: calibration = 32 x 512 Wikipedia tokens drawn with seed 0,
perplexity over every 512-token window of the Wikipedia held-out and news streams.
Results accumulate in benchmarks/results/llm_pruning.json (a re-run skips variants done
with the same protocol unless --fresh) and the table in BENCHMARKS.md is regenerated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "llm_pruning.json"
sys.path.insert(0, str(ROOT))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.markdown_section import replace_section  # noqa: E402

# name -> (method, knobs); None = the dense model. Ordered by what matters most.
VARIANTS: dict[str, tuple[str, dict] | None] = {
    "dense": None,
    "magnitude-50%": ("magnitude", {"sparsity": 0.5}),
    "wanda-50%": ("wanda", {"sparsity": 0.5}),
    "sparsegpt-50%": ("sparsegpt", {"sparsity": 0.5}),
    "magnitude-4:8": ("magnitude", {"pattern": "4:8"}),
    "wanda-4:8": ("wanda", {"pattern": "4:8"}),
    "sparsegpt-4:8": ("sparsegpt", {"pattern": "4:8"}),
    "magnitude-2:4": ("magnitude", {"pattern": "2:4"}),
    "wanda-2:4": ("wanda", {"pattern": "2:4"}),
    "sparsegpt-2:4": ("sparsegpt", {"pattern": "2:4"}),
    "wanda-50%-owl": ("wanda", {"sparsity": 0.5, "layerwise": "owl"}),
    "wanda-70%": ("wanda", {"sparsity": 0.7}),
    "wanda-70%-owl": ("wanda", {"sparsity": 0.7, "layerwise": "owl"}),
    "wanda-50%-bf16-forward": ("wanda", {"sparsity": 0.5, "_forward_dtype": "bf16"}),
    "sparsegpt-70%": ("sparsegpt", {"sparsity": 0.7}),
    "sparsegpt-70%-owl": ("sparsegpt", {"sparsity": 0.7, "layerwise": "owl"}),
}


def run_variant(name: str, eval_windows: int | None, calib_samples: int) -> dict:
    """Child process: compress one variant, evaluate it, report times and peak RSS."""
    import torch

    import compress
    from compress.config import MethodConfig
    from models import create_model
    from toolkit.data import cached_streams, sample_calibration
    from toolkit.eval import EvalProtocol, evaluate_perplexities

    loaded = create_model("smollm2-135m")
    streams = cached_streams(loaded.tokenizer)
    result: dict = {"variant": name, "threads": torch.get_num_threads()}
    spec = VARIANTS[name]
    if spec is not None:
        method, knobs = spec
        knobs = dict(knobs)
        dtype = {"bf16": torch.bfloat16}.get(knobs.pop("_forward_dtype", ""), torch.float32)
        config = MethodConfig.from_dict({"method": method, **knobs})
        calib = sample_calibration(streams.calib_pool, calib_samples, 512, 0)
        block_seconds: list[float] = []
        last = [time.perf_counter()]

        def per_block(stage, done, total):
            if stage == "prune":
                now = time.perf_counter()
                block_seconds.append(now - last[0])
                last[0] = now

        start = time.perf_counter()
        report = compress.apply(loaded.module, config, calib, forward_dtype=dtype,
                                progress=per_block)
        result["prune_seconds"] = time.perf_counter() - start
        result["seconds"] = report.seconds
        result["block_seconds"] = block_seconds
        result["block_method_seconds"] = report.block_method_seconds
        result["sparsity"] = report.overall_sparsity
        result["forward_dtype"] = report.forward_dtype
        result["block_targets"] = report.block_targets
    protocol = EvalProtocol(512, eval_windows)
    metrics = evaluate_perplexities(loaded.module, streams, protocol)
    result["wiki_ppl"] = metrics["wikipedia"].ppl
    result["news_ppl"] = metrics["news"].ppl
    result["eval_windows"] = {k: v.windows for k, v in metrics.items()}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["fp32_model_mb"] = sum(p.numel() for p in loaded.module.parameters()) * 4 / 2**20
    return result


def render(results: dict) -> str:
    from benchmarks.llm_pruning_table import render_table

    return render_table(results, environment())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-windows", default="all",
                        help="perplexity windows per stream (default: all)")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--variants", help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite BENCHMARKS.md from the saved results without running")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    windows = None if args.eval_windows == "all" else int(args.eval_windows)
    if args.worker:
        print(json.dumps(run_variant(args.worker, windows, args.calib_samples)))
        return 0
    if args.render_only:
        replace_section(ROOT / "BENCHMARKS.md", "llm_pruning",
                        render(json.loads(RESULTS.read_text())))
        return 0
    protocol = {"eval_windows": args.eval_windows, "calib_samples": args.calib_samples}
    results = {} if args.fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    if results.get("protocol") != protocol:
        results = {"protocol": protocol, "variants": {}}
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    for name in names:
        if name not in VARIANTS:
            print(f"unknown variant {name!r}", file=sys.stderr)
            return 2
        if name in results["variants"]:
            continue
        print(f"[bench] {name} ...", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--eval-windows", args.eval_windows,
             "--calib-samples", str(args.calib_samples)],
            capture_output=True, text=True, cwd=ROOT)
        if child.returncode != 0:
            print(child.stderr[-3000:], file=sys.stderr)
            return 1
        results["variants"][name] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"[bench] {name}: {json.dumps(results['variants'][name])[:300]}", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        replace_section(ROOT / "BENCHMARKS.md", "llm_pruning", render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
