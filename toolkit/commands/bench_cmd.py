"""`toolkit bench PATH...`: latency, load time, memory and accuracy of exported files (and
PyTorch models for comparison), several at once in one interleaved run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from models.registry import is_registered
from toolkit.commands.common import positive_int, write_json
from toolkit.data.cache import write_text_atomic
from toolkit.errors import UserError
from toolkit.progress import make_progress
from toolkit.report import format_table

RUNTIME_OF_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert"}
NOT_YET = {".mlpackage": "Core ML", ".mlmodel": "Core ML"}
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier at bytes 4..8 of every .tflite


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time exported models the way a phone runs them, side by side",
        description="Load each model in its own process, time a first inference, then "
                    "warm-up and timed runs interleaved across the models (so their ratios "
                    "hold on a noisy machine) until both --runs and --min-seconds are met. "
                    "LLMs: one decode token after a --prompt-tokens prefill is the timed "
                    "step; prefill is timed too. Accuracy is the output error against a "
                    "PyTorch model (the first PyTorch model given, or --reference).")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help=".onnx or .tflite file, or an artifact directory / registered name "
                        "(PyTorch)")
    p.add_argument("--runtime", choices=("auto", "onnxruntime", "litert", "coreml", "torch"),
                   default="auto", help="auto: by file type; coreml is refused off Apple "
                   "devices (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op threads per model, as on a phone's big core "
                        "(default: %(default)s)")
    p.add_argument("--warmup", type=_non_negative_int, default=3, metavar="W",
                   help="untimed runs per model first (default: %(default)s)")
    p.add_argument("--runs", type=positive_int, default=20, metavar="R",
                   help="minimum timed runs per model (default: %(default)s)")
    p.add_argument("--min-seconds", type=float, default=2.0, metavar="S",
                   help="minimum timed seconds of the slowest model (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=positive_int, default=64, metavar="P",
                   help="LLMs: prompt length of the prefill (default: %(default)s)")
    p.add_argument("--max-context", type=positive_int, default=512, metavar="C",
                   help="LLMs in PyTorch: cache size (match the exported files') "
                        "(default: %(default)s)")
    p.add_argument("--reference", metavar="MODEL",
                   help="PyTorch model (artifact or name) whose outputs are the accuracy "
                        "reference (default: the first PyTorch model in PATH...)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the full report as JSON")
    p.add_argument("--html", type=Path, metavar="PATH",
                   help="write an HTML report with the latency distributions")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (errors and the final table still print)")
    device = p.add_argument_group(
        "on a device", "--device browser|phone runs the same protocol in the web app "
        "(apps/web, `make web`) with onnxruntime-web / LiteRT.js: PATH is then a bundle "
        "folder (`toolkit export ... --bundle DIR`) or an .onnx / .tflite file. `browser`: "
        "a local headless Chromium. `phone`: serves the page and waits for a phone on the "
        "same network to open it (URL and QR code printed; https with a self-signed "
        "certificate by default: trust it once from /bench/certificate.pem, iOS: install "
        "the profile then enable it under General > About > Certificate Trust Settings; "
        "Android: Settings > Security > Install a certificate > CA certificate).")
    device.add_argument("--device", choices=("host", "browser", "phone"), default="host",
                        help="where the models run (default: %(default)s)")
    device.add_argument("--backend", choices=("auto", "wasm", "webgpu"), default="auto",
                        help="browser backend; auto: WebGPU where the browser has it, else "
                             "WASM (default: %(default)s)")
    device.add_argument("--host", default="127.0.0.1",
                        help="address the bench server binds to; 0.0.0.0 for a phone "
                             "(default: %(default)s)")
    device.add_argument("--port", type=_port, default=0,
                        help="server port; 0 picks a free one (default: %(default)s)")
    device.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None,
                        help="serve https (default: on for phone, off for browser)")
    device.add_argument("--cert", type=Path, help="PEM certificate for https (with --key) "
                        "instead of the self-signed one")
    device.add_argument("--key", type=Path, help="PEM private key of --cert")
    device.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="seconds to wait for the page's results (default: 600 for "
                             "browser, 1800 for phone)")
    device.add_argument("--emulate", metavar="DEVICE",
                        help="--device browser: Playwright's emulation of a phone, e.g. "
                             "'iPhone 15' or 'Pixel 7' (viewport and user agent)")
    p.set_defaults(run=run)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port number 0..65535")
    return int(text)


def _non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def resolve_targets(paths: list[str], runtime: str):
    from toolkit.bench.session import BenchTarget

    targets, seen = [], set()
    for spec in paths:
        path = Path(spec).expanduser()
        suffix = path.suffix.lower()
        if suffix in NOT_YET:
            raise UserError(f"{spec}: {NOT_YET[suffix]} files run only on Apple devices and "
                            "are not benchmarked here: export to ONNX or tflite to measure "
                            "the model on this machine")
        if suffix in RUNTIME_OF_SUFFIX:
            check_model_file(spec, path)
            kind = RUNTIME_OF_SUFFIX[suffix]
        elif path.is_dir() or is_registered(spec):
            kind = "torch"
        else:
            raise UserError(f"{spec} is neither an .onnx file, a model directory nor a "
                            "registered model name: check the path (see `toolkit models`)")
        if runtime not in ("auto", kind):
            raise UserError(f"{spec} runs on {kind}, not --runtime {runtime}")
        if spec in seen:
            raise UserError(f"{spec} is given twice: list each model once")
        seen.add(spec)
        targets.append(BenchTarget(spec, os.fspath(path) if kind != "torch" or path.is_dir()
                                   else spec, kind))
    return targets


def check_model_file(spec: str, path: Path) -> None:
    """Refuse, in one line naming the fix, an exported file that cannot be a model: missing,
    a directory, empty, or a .tflite without the LiteRT flatbuffer identifier. Subtler
    damage (a truncated ONNX file) is named when its runtime fails to load it."""
    fix = f"re-export it with `toolkit export {path.suffix.lower().lstrip('.')} --model MODEL " \
          f"--out {spec}`"
    if path.is_dir():
        raise UserError(f"{spec} is a directory, not a {path.suffix} file: pass the exported "
                        f"file itself, or {fix}")
    if not path.is_file():
        raise UserError(f"{spec} does not exist: check the path")
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head:
        raise UserError(f"{spec} is empty (0 bytes): {fix}")
    if path.suffix.lower() == ".tflite" and head[4:8] != TFLITE_IDENTIFIER:
        raise UserError(f"{spec} is not a LiteRT flatbuffer (no {TFLITE_IDENTIFIER.decode()} "
                        f"identifier): {fix}")


def run(args: argparse.Namespace) -> int:
    from toolkit.bench.html_report import render_html
    from toolkit.bench.session import BenchOptions

    if not args.min_seconds >= 0:
        raise UserError(f"--min-seconds {args.min_seconds} must be >= 0")
    if args.html and args.html.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--html {args.html} must end in .html")
    if args.runtime == "coreml":
        raise UserError("--runtime coreml: Core ML runs only on Apple devices and is not "
                        "benchmarked here: bench the model's ONNX or tflite export instead")
    options = BenchOptions(threads=args.threads, warmup=args.warmup, runs=args.runs,
                           min_seconds=args.min_seconds, prompt_tokens=args.prompt_tokens,
                           max_context=args.max_context, reference=args.reference)
    if args.device != "host":
        report = _device_report(args, options)
    else:
        report = _host_report(args, options)
    print(format_table(HEADERS, [table_row(m, report["models"][0]) for m in report["models"]]))
    write_json(args.json, report)
    if args.html:
        write_text_atomic(args.html.expanduser(), render_html(report))
    return 0


def _device_report(args: argparse.Namespace, options) -> dict:
    from toolkit.bench.device.run import DeviceOptions, run_device_bench

    if args.runtime != "auto" or args.reference:
        raise UserError(f"--device {args.device} runs each file in the browser's runtime and "
                        "compares it with the same file on this machine: drop --runtime and "
                        "--reference")
    if args.timeout is not None and not args.timeout > 0:
        raise UserError(f"--timeout {args.timeout} must be > 0 seconds")
    if args.emulate and args.device != "browser":
        raise UserError("--emulate is for --device browser (a phone is itself)")
    tls = args.tls if args.tls is not None else args.device == "phone"
    if (args.cert or args.key) and not tls:
        raise UserError("--cert/--key are for https: drop --no-tls")
    timeout = args.timeout or (1800.0 if args.device == "phone" else 600.0)
    return run_device_bench(args.paths, options, DeviceOptions(
        device=args.device, backend=args.backend, host=args.host, port=args.port, tls=tls,
        cert=args.cert, key=args.key, timeout=timeout, emulate=args.emulate),
        say=lambda text: print(text, flush=True))


def _host_report(args: argparse.Namespace, options) -> dict:
    from toolkit.bench.session import run_bench

    for flag, given in (("--emulate", args.emulate), ("--cert", args.cert),
                        ("--tls", args.tls), ("--timeout", args.timeout)):
        if given:
            raise UserError(f"{flag} is for --device browser|phone")
    targets = resolve_targets(args.paths, args.runtime)
    progress = make_progress(args.quiet)
    try:
        report = run_bench(targets, options, progress)
    except RuntimeError as exc:  # a worker's failure, named by model
        raise UserError(str(exc).splitlines()[0][:400]) from None
    finally:
        if progress is not None:
            progress.close()  # end the bars' lines before the table or an error
    return report


HEADERS = ["model", "runtime", "MB", "load ms", "first ms", "p50 ms", "p90 ms", "p99 ms",
           "mean±std ms", "x p50", "RSS MB", "prefill tok/s", "decode tok/s", "max err",
           "cosine"]


def table_row(model: dict, first: dict) -> list:
    lat, llm, acc = model["latency"], model["llm"], model["accuracy"]
    size = model["file_bytes"]
    return [model["name"], model["runtime"], f"{size / 1e6:.2f}" if size else "-",
            f"{1000 * model['load_seconds']:.0f}", f"{model['first_inference_ms']:.2f}",
            f"{lat['p50_ms']:.3f}", f"{lat['p90_ms']:.3f}", f"{lat['p99_ms']:.3f}",
            f"{lat['mean_ms']:.3f}±{lat['std_ms']:.3f}",
            f"{lat['p50_ms'] / first['latency']['p50_ms']:.2f}",
            f"{model['peak_rss_mb']:.0f}" if model.get("peak_rss_mb") is not None else "-",
            f"{llm['prefill_tokens_per_s']:.1f}" if llm else "-",
            f"{llm['decode_tokens_per_s']:.1f}" if llm else "-",
            f"{acc['max_abs_error']:.2e}" if acc else "-",
            f"{acc['cosine']:.6f}" if acc else "-"]
