"""Benchmark: expert dropping on SmolLM2-135M sparsely upcycled to a token-routed MoE
(arXiv 2212.05055) and briefly trained on the Wikipedia calibration text.

    python benchmarks/vmoe_upcycled_lm.py [--experts 4] [--top-k 2] [--train-steps 24]
    python benchmarks/vmoe.py --render-only     # puts the table into BENCHMARKS.md

Upcycle -> train (MoE layers only, next-token + balance loss) -> the expert-dropping grid
of benchmarks/expert_dropping_grid.py, scored by Wikipedia perplexity on held-out windows.
To fit 2 CPU cores (one thread, beside the V-MoE run on the other core) the LM grid runs
the one-shot schedule at every ratio and a short KD recovery after it at the ratios of
--kd-ratios only (a KD step of the 135M model took ~80 s on a busy core); the iterative
schedules (`--iterative`) are left to the V-MoE by default, and the perplexity is taken
on a few held-out windows. Results: benchmarks/results/vmoe_lm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.environment import environment  # noqa: E402
from benchmarks.expert_dropping_grid import CRITERIA, GridSettings, run_grid  # noqa: E402
from models import load_model  # noqa: E402
from models.upcycle import upcycle_llama  # noqa: E402
from toolkit.data import cached_streams, sample_calibration  # noqa: E402
from toolkit.data.windows import eval_windows  # noqa: E402
from toolkit.eval.perplexity import perplexity  # noqa: E402
from toolkit.train.upcycle_lm import routing_frequencies, train_upcycled  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=24)
    parser.add_argument("--train-lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-seq-len", type=int, default=256)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=6)
    parser.add_argument("--recover-steps", type=int, default=3)
    parser.add_argument("--recover-lr", type=float, default=5e-5)
    parser.add_argument("--iterative", action="store_true",
                        help="also the iterative schedules (one expert per round)")
    parser.add_argument("--kd-ratios", default="0.5",
                        help="drop ratios that also get the one-shot+kd cell")
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "vmoe_lm.json")
    return parser.parse_args()


def upcycle_and_train(model, streams, wiki_ppl, args) -> tuple[dict, dict]:
    """Upcycle in place and train; (perplexities dense/upcycled/trained, training record)."""
    ppl = {"dense": wiki_ppl(model)}
    upcycle_llama(model, args.experts, args.top_k, seed=0)
    ppl["upcycled"] = wiki_ppl(model)
    train_tokens = sample_calibration(streams.calib_pool, args.batch_size * args.train_steps,
                                      args.train_seq_len, seed=1)
    training = train_upcycled(model, train_tokens, steps=args.train_steps, lr=args.train_lr,
                              batch_size=args.batch_size, seed=0)
    ppl["trained"] = wiki_ppl(model)
    print(f"ppl {ppl}; training {training['seconds']:.0f} s", flush=True)
    return ppl, training


def dropping_grid(model, calib, wiki_ppl, args) -> list[dict]:
    """One-shot (and --iterative) cells at every ratio; +KD cells at --kd-ratios only,
    merged into the same rows."""
    settings = GridSettings(recover_steps=args.recover_steps, recover_lr=args.recover_lr,
                            batch_size=args.batch_size, seed=0, reconstruction_samples=8)
    grid = run_grid(model, args.experts, calib, wiki_ppl, settings, criteria=CRITERIA,
                    schedules=("one-shot", "iterative") if args.iterative else ("one-shot",))
    kd_ratios = tuple(float(r) for r in args.kd_ratios.split(",") if r)
    if kd_ratios:
        recovered = run_grid(model, args.experts, calib, wiki_ppl, settings,
                             criteria=CRITERIA, ratios=kd_ratios,
                             schedules=("one-shot+kd", "iterative+kd") if args.iterative
                             else ("one-shot+kd",))
        by_cell = {(row["ratio"], row["criterion"]): row for row in grid}
        for row in recovered:
            by_cell[(row["ratio"], row["criterion"])]["schedules"].update(row["schedules"])
    return grid


def main() -> int:
    args = parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model(args.model)
    streams = cached_streams(loaded.tokenizer)
    windows = eval_windows(streams.wiki_eval, 512, args.eval_windows)

    def wiki_ppl(model) -> float:
        return perplexity(model, windows).ppl

    model = loaded.module.eval()
    ppl, training = upcycle_and_train(model, streams, wiki_ppl, args)
    calib = sample_calibration(streams.calib_pool, args.calib_samples, args.train_seq_len,
                               seed=0)
    grid = dropping_grid(model, calib, wiki_ppl, args)
    report = {"environment": environment(), "threads": torch.get_num_threads(),
              "model": args.model, "experts": args.experts, "top_k": args.top_k,
              "train_steps": args.train_steps, "train_lr": args.train_lr,
              "batch_size": args.batch_size, "train_seq_len": args.train_seq_len,
              "recover_steps": args.recover_steps, "recover_lr": args.recover_lr,
              "train_seconds": training["seconds"],
              "training": {k: v for k, v in training.items()
                           if k not in ("lm_loss", "balance_loss")},
              "final_lm_loss": training["lm_loss"][-1],
              "routing_after_training": routing_frequencies(model, calib[:4]),
              "eval": {"stream": "wikipedia held-out", "windows": args.eval_windows,
                       "seq_len": 512},
              "ppl": ppl, "dropping": grid, "seconds": time.perf_counter() - start}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
