"""`toolkit eval`: perplexity on the built-in Wikipedia held-out and news streams
(`--suite ppl`, the default), the knowledge suite with intervals (`--suite kick`), or
compressed models side by side with their dense model (`--compare DIR ...`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from models import load_model
from models.registry import is_registered
from toolkit.artifacts import load_manifest
from toolkit.commands.common import (
    add_eval_options,
    add_runtime_options,
    positive_int,
    write_json,
)
from toolkit.data import cached_streams
from toolkit.errors import UserError
from toolkit.eval import EvalProtocol, evaluate_perplexities
from toolkit.eval.compare import CompareEntry, compare_rows, compare_table, kick_table
from toolkit.eval.kick import DEFAULT_MMLU_QUESTIONS, KickProtocol, KickResult
from toolkit.eval.kick_cache import evaluate_kick
from toolkit.eval.perplexity_streaming import evaluate_directory_streaming
from toolkit.hardware import resolve_device
from toolkit.limits import check_length
from toolkit.pipeline import metrics_dict
from toolkit.progress import make_progress
from toolkit.report import format_table
from toolkit.streaming.engine_choice import add_engine_options
from toolkit.streaming.eval_engine import choose_eval_engine, refuse_streaming_generation


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="perplexity, or knowledge scores, of a model or artifact",
        description="Evaluate perplexity with the same protocol `toolkit compress` reports. "
                    "On an artifact directory the recorded protocol is reused, so the "
                    "reported numbers are reproduced. `--suite kick` adds factoid QA "
                    "(closed and open book) and MMLU with 95% intervals (LLM-KICK, "
                    "arXiv 2310.01382); `--compare` sets artifacts beside their dense model.")
    p.add_argument("model_positional", nargs="?", metavar="MODEL_OR_DIR",
                   help="same as --model")
    p.add_argument("--model", help="registered name, HF directory / artifact, or .gguf file")
    p.add_argument("--suite", choices=("ppl", "kick"), default=None,
                   help="ppl: perplexity only (default); kick: factoid QA closed/open book, "
                        "MMLU dev and perplexity, each with a 95%% interval")
    p.add_argument("--compare", nargs="+", metavar="DIR",
                   help="run the kick suite on each artifact DIR and on its dense model "
                        "(toolkit.json's source model) and print them side by side, "
                        "flagging where perplexity hides lost knowledge; perplexity uses the "
                        "first DIR's recorded protocol for every model; results are cached")
    p.add_argument("--kick-questions", type=positive_int, metavar="N",
                   help="kick suite: ask N factoid questions (and N MMLU questions unless "
                        "--mmlu-questions says otherwise), a fixed-seed subsample spread "
                        "over sections and subjects (default: all 213)")
    p.add_argument("--mmlu-questions", type=_count_or_all, metavar="N|all",
                   help="kick suite: MMLU dev questions, spread over subjects; `all` asks "
                        f"all 273 (default: {DEFAULT_MMLU_QUESTIONS}, or --kick-questions)")
    p.add_argument("--no-cache", action="store_true",
                   help="kick suite: recompute instead of reusing results cached for the "
                        "same weights and protocol, and cache nothing")
    add_eval_options(p, defaults_from_artifact=True)
    add_engine_options(p)
    add_runtime_options(p)
    p.set_defaults(run=run)


def _count_or_all(text: str) -> int | str:
    return "all" if text == "all" else positive_int(text)


def resolve_protocol(args: argparse.Namespace, model_spec: str) -> EvalProtocol:
    path = Path(model_spec).expanduser()
    manifest = load_manifest(path) if path.is_dir() else None
    recorded = EvalProtocol.from_dict(manifest.get("eval_protocol", {})) if manifest \
        else EvalProtocol()
    windows = recorded.windows if args.eval_windows is None else args.eval_windows
    return EvalProtocol(args.eval_seq_len or recorded.seq_len, windows)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        refuse_streaming_generation(args, "--compare (the knowledge suite)")
        return run_compare(args)
    spec = args.model or args.model_positional
    if args.model and args.model_positional and args.model != args.model_positional:
        raise UserError("give the model once: either MODEL_OR_DIR or --model")
    if not spec:
        raise UserError("no model given: pass --model NAME_OR_DIR (see `toolkit models`)")
    if args.suite == "kick":
        refuse_streaming_generation(args, "--suite kick")
        return run_kick(args, spec)
    if args.kick_questions is not None or args.mmlu_questions is not None or args.no_cache:
        raise UserError("--kick-questions, --mmlu-questions and --no-cache apply to the "
                        "knowledge suite: add --suite kick")
    device = resolve_device(args.device)
    protocol = resolve_protocol(args, spec)
    engine = choose_eval_engine(spec, args)
    progress = make_progress(args.quiet)
    try:
        if engine == "streaming":
            source = streaming_source(spec)
            results = evaluate_directory_streaming(spec, protocol, device=device,
                                                   progress=progress)
        else:
            loaded = load_model(spec)
            check_length(loaded, protocol.seq_len, "--eval-seq-len")
            source = loaded.source
            results = evaluate_perplexities(loaded.module, cached_streams(loaded.tokenizer),
                                            protocol, device=device, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    rows = [[name, r.ppl, r.mean_nll, r.windows, r.tokens] for name, r in results.items()]
    print(format_table(["stream", "ppl", "nll/token", "windows", "tokens"], rows))
    print(f"model: {source}; windows of {protocol.seq_len} tokens")
    write_json(args.json, {"model": source, "eval_protocol": protocol.to_dict(),
                           "metrics": metrics_dict(results)})
    return 0


def streaming_source(spec: str) -> str:
    """What the report names as the model: as the in-memory path's LoadedModel.source, the
    path as given with `~` expanded; a registered model by its name (its builder, which
    adds where the weights came from, does not run here)."""
    return spec if is_registered(spec) else str(Path(spec).expanduser())


def _kick_results(args: argparse.Namespace, specs: list[str], protocol: KickProtocol,
                  ) -> dict[str, tuple[KickResult, bool]]:
    device = resolve_device(args.device)
    progress = make_progress(args.quiet)

    def load(model_spec: str):
        loaded = load_model(model_spec)
        check_length(loaded, protocol.perplexity.seq_len, "--eval-seq-len")
        return loaded

    try:
        return {spec: evaluate_kick(spec, protocol, device=device, progress=progress,
                                    use_cache=not args.no_cache, load=load) for spec in specs}
    finally:
        if progress is not None:
            progress.close()


def kick_protocol(args: argparse.Namespace, model_spec: str) -> KickProtocol:
    """The suite's protocol from the flags; perplexity as `resolve_protocol` gives it."""
    mmlu = args.mmlu_questions or args.kick_questions or DEFAULT_MMLU_QUESTIONS
    return KickProtocol(questions=args.kick_questions,
                        mmlu_questions=None if mmlu == "all" else mmlu,
                        perplexity=resolve_protocol(args, model_spec))


def _protocol_line(protocol: KickProtocol) -> str:
    ppl = protocol.perplexity.to_dict()
    return (f"protocol: {protocol.questions or 'all'} factoid and "
            f"{protocol.mmlu_questions or 'all'} MMLU questions (seed "
            f"{protocol.seed}), greedy answers of <= {protocol.max_new_tokens} tokens; "
            f"perplexity {ppl['windows']} windows x {ppl['seq_len']} tokens per stream")


def run_kick(args: argparse.Namespace, spec: str) -> int:
    protocol = kick_protocol(args, spec)
    result, cached = _kick_results(args, [spec], protocol)[spec]
    print(kick_table(result))
    print(_protocol_line(protocol))
    seconds = sum(result.seconds.values())
    print(f"model: {result.model}; " + ("cached result reused" if cached
                                        else f"{seconds:.1f} s"))
    write_json(args.json, {"suite": "kick", "cached": cached, **result.to_dict()})
    return 0


def dense_model_of(directory: str) -> str | None:
    """The dense model an artifact was compressed from (its registered name when it has
    one), or None when `directory` is not a toolkit artifact."""
    path = Path(directory).expanduser()
    manifest = load_manifest(path) if path.is_dir() else None
    if not manifest:
        return None
    source = manifest.get("model_name") or manifest.get("source_model")
    if not source:
        raise UserError(f"{path}/toolkit.json names no source_model: re-run `toolkit "
                        "compress`, or compare the dense model by passing it to --compare")
    if not is_registered(source) and not Path(source).expanduser().exists():
        raise UserError(f"the dense model of {path} ({source}, toolkit.json's source_model) "
                        "does not exist here: restore it at that path to compare against it")
    return source


def run_compare(args: argparse.Namespace) -> int:
    if args.model or args.model_positional:
        raise UserError("--compare takes every model itself: drop MODEL_OR_DIR/--model, e.g. "
                        "`toolkit eval --compare DIR_A DIR_B`")
    if args.suite == "ppl":
        raise UserError("--compare runs the knowledge suite: drop --suite ppl")
    for spec in args.compare:
        if not is_registered(spec) and not Path(spec).expanduser().exists():
            raise UserError(f"--compare {spec} does not exist: pass artifact directories "
                            "written by `toolkit compress` (or registered model names)")
    dense_of: dict[str, str | None] = {}  # every model to run -> its dense model, in order
    for spec in args.compare:
        dense = dense_model_of(spec)
        if dense is not None:
            dense_of.setdefault(dense, None)
        dense_of[spec] = dense
    protocol = kick_protocol(args, args.compare[0])
    results = _kick_results(args, list(dense_of), protocol)
    entries = [CompareEntry(spec, results[spec][0], dense) for spec, dense in dense_of.items()]
    print(compare_table(entries))
    print(_protocol_line(protocol))
    cached = [spec for spec, (_, hit) in results.items() if hit]
    if cached:
        print("cached results reused for: " + ", ".join(cached))
    write_json(args.json, {"suite": "kick", "protocol": protocol.to_dict(),
                           "models": compare_rows(entries),
                           "results": {spec: {"cached": hit, **result.to_dict()}
                                       for spec, (result, hit) in results.items()}})
    return 0
