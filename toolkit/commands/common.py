"""Arguments and helpers several subcommands share."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolkit.data.cache import atomic_text_file
from toolkit.errors import UserError
from toolkit.eval.protocol import DEFAULT_EVAL_SEQ_LEN, DEFAULT_EVAL_WINDOWS
from toolkit.limits import seed_arg  # noqa: F401  (the type of every --seed flag)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def eval_windows_arg(text: str) -> int | None:
    """`all` -> None (every window), else a positive count."""
    return None if text == "all" else positive_int(text)


def add_eval_options(parser: argparse.ArgumentParser, *, defaults_from_artifact: bool) -> None:
    def default(value: object) -> str:
        if defaults_from_artifact:
            return f" (default: the artifact's recorded protocol, else {value})"
        return f" (default: {value})"

    parser.add_argument(
        "--eval-windows", type=eval_windows_arg, metavar="K|all",
        default=None if defaults_from_artifact else DEFAULT_EVAL_WINDOWS,
        help="perplexity windows per stream, evenly spread; `all` evaluates the full "
             "Wikipedia and news streams (minutes per model on 2 cores)"
             + default(DEFAULT_EVAL_WINDOWS))
    parser.add_argument(
        "--eval-seq-len", type=positive_int, metavar="L",
        default=None if defaults_from_artifact else DEFAULT_EVAL_SEQ_LEN,
        help="tokens per perplexity window" + default(DEFAULT_EVAL_SEQ_LEN))


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda[:N] when a GPU is present (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the results as JSON to PATH")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (errors and the final table still print)")


def write_json(path: Path | None, data: dict) -> None:
    """Write `data` to `path` atomically (temp file + rename), with the user's umask."""
    if path is None:
        return
    path = path.expanduser()
    if path.is_dir():
        raise UserError(f"--json {path} is a directory: pass a file path")
    with atomic_text_file(path) as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def run_with_threads(threads: int, job, args: argparse.Namespace) -> int:
    """job(args) with torch's intra-op thread count set to `threads`, restored after
    (tests call jobs in-process, so the setting must not leak)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return job(args)
    finally:
        torch.set_num_threads(before)


def apply_with_progress(module, config, calib, *, quiet: bool, **kwargs):
    """compress.apply(module, config, calib, **kwargs) under the CLI's progress bars (closed
    even on an error, so the message starts on its own line); (report, seconds)."""
    import time

    import compress
    from toolkit.progress import make_progress

    progress = make_progress(quiet)
    start = time.perf_counter()
    try:
        report = compress.apply(module, config, calib, progress=progress, **kwargs)
    finally:
        if progress is not None:
            progress.close()
    return report, time.perf_counter() - start
