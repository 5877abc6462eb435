"""Benchmark: Mobile V-MoE on Fashion-MNIST (arXiv 2309.04354) and expert dropping
(MC-Suite, arXiv 2504.05586), seeded, on this machine.

    python benchmarks/vmoe.py [--seeds 0,1,2] [--epochs 2] [--skip-lm]

1. For each seed: a dense ViT, the per-image MoE with the super-class-guided router
   (super-classes from that seed's dense model) and with the end-to-end router, trained
   the same way (`toolkit.train.vmoe_trainer`, the code `toolkit train vmoe` runs):
   test accuracy mean and spread over seeds, parameters total/activated, FLOPs, and
   batch-1 latency through onnxruntime (seed-0 models, one interleaved `toolkit bench`
   run, so the ratios hold on a noisy machine).
2. Expert dropping on the seed-0 guided MoE: criterion x drop ratio x schedule -> test
   accuracy (benchmarks/expert_dropping_grid.py).
3. The same grid on SmolLM2-135M sparsely upcycled and briefly trained
   (benchmarks/vmoe_upcycled_lm.py) -> Wikipedia perplexity.
Results: benchmarks/results/vmoe.json and the `vmoe` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import compress  # noqa: E402
from benchmarks.environment import environment  # noqa: E402
from benchmarks.expert_dropping_grid import GridSettings, run_grid  # noqa: E402
from benchmarks.markdown_section import replace_section  # noqa: E402
from benchmarks.vmoe_tables import render  # noqa: E402
from compress.experts import DropExpertsConfig  # noqa: E402
from models.fashion_mnist import sample  # noqa: E402
from models.vmoe import FASHION_MNIST  # noqa: E402
from toolkit.data.images import fashion_mnist_data  # noqa: E402
from toolkit.train.superclass import confusion_matrix, superclasses_from_confusion  # noqa: E402
from toolkit.train.vmoe_trainer import TrainSettings, evaluate, predict, train_vmoe  # noqa: E402

MODES = ("dense", "superclass", "end-to-end")


def train_family(seeds: list[int], epochs: int, train_limit: int | None) -> tuple[dict, dict]:
    """{mode: [metrics per seed]} and the seed-0 models."""
    results: dict = {mode: [] for mode in MODES}
    kept: dict = {}
    for seed in seeds:
        data = fashion_mnist_data(seed, train_limit)
        settings = TrainSettings(epochs=epochs, seed=seed)
        dense, history = train_vmoe(FASHION_MNIST, data, "dense", settings, show_progress=False)
        predictions, _ = predict(dense, data, data.val[0])
        groups = superclasses_from_confusion(
            confusion_matrix(predictions, data.val[1], len(data.classes)),
            FASHION_MNIST.num_experts)
        models = {"dense": (dense, history)}
        for mode in ("superclass", "end-to-end"):
            models[mode] = train_vmoe(FASHION_MNIST, data, mode, settings,
                                      superclasses=groups if mode == "superclass" else None,
                                      show_progress=False)
        for mode, (model, history) in models.items():
            metrics = evaluate(model, data, data.test)
            metrics["train_seconds"] = history["train_seconds"]
            metrics["seed"] = seed
            if mode == "superclass":
                metrics["superclasses"] = [[data.classes[c] for c, g in enumerate(groups)
                                            if g == group] for group in sorted(set(groups))]
            results[mode].append(metrics)
            print(f"seed {seed} {mode:10s} accuracy {metrics['accuracy']:.4f} "
                  f"({history['train_seconds']:.0f} s)", flush=True)
        if seed == seeds[0]:
            kept = {mode: model for mode, (model, _) in models.items()}
            kept["data"] = data
    return results, kept


def latency(models: dict, work: Path, dropped: torch.nn.Module | None) -> dict:
    """Batch-1 latency of each model's ONNX file, one interleaved run."""
    from export.vision import Preprocess, export_vision
    from toolkit.bench.session import BenchOptions, BenchTarget, run_bench

    data = models["data"]
    files = {}
    named = {mode: models[mode] for mode in MODES}
    if dropped is not None:
        named["superclass, 2 of 4 experts dropped"] = dropped
    for name, model in named.items():
        path = work / f"{name.split(',')[0]}{'-dropped' if ',' in name else ''}.onnx"
        export_vision(model.eval(), (1, 1, 28, 28), "onnx", path,
                      preprocess=Preprocess(data.mean, data.std))
        files[name] = path
    report = run_bench([BenchTarget(name, str(path), "onnxruntime")
                        for name, path in files.items()],
                       BenchOptions(threads=1, warmup=20, runs=300, min_seconds=5.0))
    by_name = {m["name"]: m for m in report["models"]}
    return {name: {"p50_ms": by_name[name]["latency"]["p50_ms"],
                   "p90_ms": by_name[name]["latency"]["p90_ms"],
                   "mean_ms": by_name[name]["latency"]["mean_ms"],
                   "std_ms": by_name[name]["latency"]["std_ms"],
                   "file_bytes": by_name[name]["file_bytes"]} for name in files}


def dropping(models: dict, seed: int) -> tuple[list[dict], torch.nn.Module]:
    """The criterion x ratio x schedule grid on the guided MoE, and one dropped model
    (frequency, half the experts) for the latency table."""
    data, moe = models["data"], models["superclass"]
    calib = data.normalise(sample("train", 2048, seed + 100))

    def accuracy(model) -> float:
        return evaluate(model, data, data.test)["accuracy"]

    settings = GridSettings(recover_steps=100, recover_lr=3e-4, batch_size=64, seed=seed)
    rows = run_grid(moe, moe.config.num_experts, calib, accuracy, settings)
    dropped = copy.deepcopy(moe)
    compress.apply(dropped, DropExpertsConfig(criterion="frequency", drop=0.5), calib)
    return rows, dropped.eval()


def summarise(results: dict) -> dict:
    out = {}
    for mode, runs in results.items():
        accuracies = [r["accuracy"] for r in runs]
        out[mode] = {"accuracy_mean": statistics.mean(accuracies),
                     "accuracy_std": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
                     "accuracies": accuracies, "params_total": runs[0]["params_total"],
                     "params_active": runs[0]["params_active"],
                     "flops_per_image": runs[0]["flops_per_image"],
                     "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs") / "vmoe-bench")
    parser.add_argument("--skip-lm", action="store_true")
    parser.add_argument("--train-limit", type=int, help="smoke runs: fewer training images")
    parser.add_argument("--no-markdown", action="store_true")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render BENCHMARKS.md from the saved results (e.g. after the "
                             "upcycled-LM grid ran) without training again")
    parser.add_argument("--lm-results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "vmoe_lm.json",
                        help="the upcycled-LM grid (written by benchmarks/vmoe_upcycled_lm.py)")
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "vmoe.json")
    args = parser.parse_args()
    os.chdir(ROOT)  # relative paths keep machine paths out of the results
    args.work.mkdir(parents=True, exist_ok=True)
    # One thread: this model's ops are too small to split, and on a shared 2-core machine
    # two threads made a training step many times slower (and seeded runs repeat bit for
    # bit only at one thread count).
    torch.set_num_threads(1)
    if args.render_only:
        report = json.loads(args.results.read_text())
        lm = json.loads(args.lm_results.read_text()) if args.lm_results.is_file() else None
        replace_section(ROOT / "BENCHMARKS.md", "vmoe", render(report, lm))
        return 0
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    results, models = train_family(seeds, args.epochs, args.train_limit)
    grid, dropped = dropping(models, seeds[0])
    timing = latency(models, args.work, dropped)
    report = {"environment": environment(), "threads": torch.get_num_threads(),
              "train_images": int(models["data"].train[1].numel()),
              "epochs": args.epochs, "seeds": seeds, "config": FASHION_MNIST.__dict__,
              "runs": results, "summary": summarise(results), "latency": timing,
              "dropping": grid, "seconds": time.perf_counter() - start}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1) + "\n")
    lm = (json.loads(args.lm_results.read_text()) if not args.skip_lm
          and args.lm_results.is_file() else None)
    text = render(report, lm)
    if args.no_markdown:
        print(text)
    else:
        replace_section(ROOT / "BENCHMARKS.md", "vmoe", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
