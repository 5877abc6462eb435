"""`toolkit eval`: perplexity on the built-in Wikipedia held-out and news streams."""

from __future__ import annotations

import argparse
from pathlib import Path

from models import load_model
from toolkit.artifacts import load_manifest
from toolkit.commands.common import add_eval_options, add_runtime_options, write_json
from toolkit.data import cached_streams
from toolkit.errors import UserError
from toolkit.eval import EvalProtocol, evaluate_perplexities
from toolkit.hardware import resolve_device
from toolkit.pipeline import metrics_dict
from toolkit.progress import make_progress
from toolkit.report import format_table


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="perplexity of a model or artifact on Wikipedia and news text",
        description="Evaluate perplexity with the same protocol `toolkit compress` reports. "
                    "On an artifact directory the recorded protocol is reused, so the "
                    "reported numbers are reproduced.")
    p.add_argument("model_positional", nargs="?", metavar="MODEL_OR_DIR",
                   help="same as --model")
    p.add_argument("--model", help="registered name, HF directory / artifact, or .gguf file")
    add_eval_options(p, defaults_from_artifact=True)
    add_runtime_options(p)
    p.set_defaults(run=run)


def resolve_protocol(args: argparse.Namespace, model_spec: str) -> EvalProtocol:
    path = Path(model_spec).expanduser()
    manifest = load_manifest(path) if path.is_dir() else None
    recorded = EvalProtocol.from_dict(manifest.get("eval_protocol", {})) if manifest \
        else EvalProtocol()
    windows = recorded.windows if args.eval_windows is None else args.eval_windows
    return EvalProtocol(args.eval_seq_len or recorded.seq_len, windows)


def run(args: argparse.Namespace) -> int:
    spec = args.model or args.model_positional
    if args.model and args.model_positional and args.model != args.model_positional:
        raise UserError("give the model once: either MODEL_OR_DIR or --model")
    if not spec:
        raise UserError("no model given: pass --model NAME_OR_DIR (see `toolkit models`)")
    device = resolve_device(args.device)
    protocol = resolve_protocol(args, spec)
    loaded = load_model(spec)
    progress = make_progress(args.quiet)
    try:
        results = evaluate_perplexities(loaded.module, cached_streams(loaded.tokenizer),
                                        protocol, device=device, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    rows = [[name, r.ppl, r.mean_nll, r.windows, r.tokens] for name, r in results.items()]
    print(format_table(["stream", "ppl", "nll/token", "windows", "tokens"], rows))
    print(f"model: {loaded.source}; windows of {protocol.seq_len} tokens")
    write_json(args.json, {"model": loaded.source, "eval_protocol": protocol.to_dict(),
                           "metrics": metrics_dict(results)})
    return 0
