"""`toolkit train upcycle`: turn a dense LM into a token-routed MoE by sparse upcycling
(arXiv 2212.05055), train it briefly on the Wikipedia calibration pool, and save a
moe-llm artifact that `toolkit compress --method drop-experts` and `toolkit eval` read.

Perplexity (the `compress`/`eval` protocol) is measured on the dense model, right after
upcycling (equal to dense up to float rounding) and after training; the routing spread
(share of assignments per expert per layer) is measured on held-out Wikipedia windows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from models import load_model
from models.upcycle import moe_layers, upcycle_llama
from toolkit.artifacts import check_output_dir, save_model_artifact
from toolkit.commands.common import (
    add_eval_options,
    add_runtime_options,
    positive_int,
    write_json,
)
from toolkit.data import cached_streams, eval_windows, sample_calibration, token_hash
from toolkit.errors import UserError
from toolkit.eval import EvalProtocol, evaluate_perplexities
from toolkit.manifest import library_versions, timestamp
from toolkit.pipeline import metrics_dict
from toolkit.progress import make_progress
from toolkit.report import format_table
from toolkit.train.upcycle_lm import routing_frequencies, train_upcycled

# Held-out Wikipedia windows (of --seq-len tokens) the routing spread is measured on.
ROUTING_WINDOWS = 8


def add_upcycle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", metavar="NAME|DIR|GGUF",
                        help="the dense decoder to upcycle (default: %(default)s)")
    parser.add_argument("--experts", type=positive_int, default=4,
                        help="experts per layer, each a copy of the MLP (default: 4)")
    parser.add_argument("--top-k", type=positive_int, default=2,
                        help="experts per token (default: 2, as Mixtral)")
    parser.add_argument("--steps", type=positive_int, default=100,
                        help="training steps after upcycling (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--seq-len", type=positive_int, default=256,
                        help="tokens per training window (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    parser.add_argument("--balance-weight", type=float, default=0.01,
                        help="weight of the Switch load-balancing loss (default: 0.01)")
    parser.add_argument("--router-init-std", type=float, default=0.02,
                        help="std of the new routers' weights (default: 0.02)")
    parser.add_argument("--train", choices=("moe", "all"), default="moe",
                        help="moe: routers and experts only (cheaper, the rest stays the "
                             "dense model's); all: every parameter (default: moe)")
    parser.add_argument("--seed", type=int, default=0,
                        help="router init, training windows and batch order")
    parser.add_argument("--no-eval", action="store_true", help="skip the perplexities")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--overwrite", action="store_true")
    add_eval_options(parser, defaults_from_artifact=False)
    add_runtime_options(parser)
    parser.set_defaults(run=run_upcycle)


def _check_args(args: argparse.Namespace) -> None:
    if args.top_k > args.experts:
        raise UserError(f"--top-k {args.top_k} exceeds --experts {args.experts}: a token "
                        "cannot use more experts than a layer has")
    if not args.lr > 0:
        raise UserError(f"--lr {args.lr} must be > 0, e.g. 1e-4")
    if args.balance_weight < 0 or args.router_init_std < 0:
        raise UserError("--balance-weight and --router-init-std must be >= 0")


def run_upcycle(args: argparse.Namespace) -> int:
    _check_args(args)
    out = args.out.expanduser()
    check_output_dir(out, args.overwrite)
    loaded = load_model(args.model)
    if loaded.tokenizer is None:
        raise UserError(f"--model {args.model} is an image model: upcycling takes a "
                        "decoder language model")
    if moe_layers(loaded.module):
        raise UserError(f"--model {args.model} already has mixture-of-experts layers: "
                        "upcycle its dense source instead")
    progress = make_progress(args.quiet)
    streams = cached_streams(loaded.tokenizer)
    protocol = EvalProtocol(args.eval_seq_len, args.eval_windows)
    start = time.perf_counter()

    def evaluate() -> dict:
        return metrics_dict(evaluate_perplexities(loaded.module, streams, protocol,
                                                  device=args.device, progress=progress))

    metrics = {} if args.no_eval else {"dense": evaluate()}
    upcycle_llama(loaded.module, args.experts, args.top_k,
                  router_init_std=args.router_init_std, seed=args.seed)
    if not args.no_eval:
        metrics["upcycled"] = evaluate()
    tokens = sample_calibration(streams.calib_pool, args.steps * args.batch_size,
                                args.seq_len, args.seed)
    training = train_upcycled(loaded.module, tokens, steps=args.steps, lr=args.lr,
                              batch_size=args.batch_size, seed=args.seed,
                              balance_weight=args.balance_weight,
                              train_all=args.train == "all", device=args.device,
                              progress=progress)
    loaded.module.to("cpu")
    if not args.no_eval:
        metrics["trained"] = evaluate()
    held_out = eval_windows(streams.wiki_eval, args.seq_len, ROUTING_WINDOWS)
    manifest = {
        "created": timestamp(), "source_model": loaded.source, "model_name": loaded.name,
        "upcycle": {"method": "sparse upcycling (arXiv 2212.05055)", "experts": args.experts,
                    "top_k": args.top_k, "router_init_std": args.router_init_std,
                    "seed": args.seed},
        "training": {**training, "data": "wikipedia calibration pool (first 90% of tokens)",
                     "tokens_sha256": token_hash(tokens)},
        "routing": {"windows": "wikipedia held-out", "count": int(held_out.shape[0]),
                    "seq_len": args.seq_len,
                    "share_per_layer": routing_frequencies(loaded.module, held_out)},
        "eval_protocol": protocol.to_dict(), "metrics": metrics,
        "versions": library_versions(), "threads": torch.get_num_threads(),
        "timing_seconds": {"total": time.perf_counter() - start,
                           "train": training["seconds"]},
    }
    save_model_artifact(out, loaded, manifest, overwrite=args.overwrite)
    print(summary(manifest, out))
    write_json(args.json, {**manifest, "output": str(out)})
    return 0


def summary(manifest: dict, out: Path) -> str:
    training, shares = manifest["training"], manifest["routing"]["share_per_layer"]
    lines = [f"upcycled {manifest['source_model']} to {manifest['upcycle']['experts']} "
             f"experts (top-{manifest['upcycle']['top_k']}); trained {training['steps']} "
             f"steps in {training['seconds']:.0f} s; LM loss {training['lm_loss'][0]:.3f} "
             f"-> {training['lm_loss'][-1]:.3f}"]
    rows = [[stage, m["wikipedia"]["ppl"], m["news"]["ppl"]]
            for stage, m in manifest["metrics"].items()]
    if rows:
        lines.append(format_table(["model", "wikipedia ppl", "news ppl"], rows))
    flat = [s for layer in shares for s in layer]
    lines.append(f"routing share per expert (held-out Wikipedia): min {min(flat):.3f}, "
                 f"max {max(flat):.3f} over {len(shares)} layers (uniform "
                 f"{1 / len(shares[0]):.3f})")
    lines.append(f"saved {out}")
    return "\n".join(lines)
