"""`toolkit compress`: prune a model block by block and save an artifact directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from compress.config import MethodConfig, registered_methods
from compress.prune.base import LAYERWISE_CHOICES
from models import load_model
from toolkit.artifacts import check_output_dir
from toolkit.commands.common import (
    add_eval_options,
    add_runtime_options,
    positive_int,
    write_json,
)
from toolkit.errors import UserError
from toolkit.eval import EvalProtocol
from toolkit.hardware import FORWARD_DTYPES, resolve_device, resolve_forward_dtype
from toolkit.pipeline import CalibrationSpec, CompressionRun, run_compression, save_lm_artifact
from toolkit.progress import make_progress
from toolkit.report import format_table

DEFAULT_MODEL = "smollm2-135m"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compress", help="prune a model (magnitude, Wanda, SparseGPT) and save it",
        description="Prune every linear layer inside the decoder blocks, block by block on "
                    "calibration text, evaluate before and after, and save a Hugging Face "
                    "directory with toolkit.json. Embeddings and the LM head stay dense.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="registered name (see `toolkit models`), Hugging Face directory "
                        "with safetensors, or .gguf file (default: %(default)s)")
    p.add_argument("--method", default="wanda", choices=sorted(registered_methods()),
                   help="pruning method (default: %(default)s)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of zeros per output row, in (0, 1) (default: 0.5, or N/M "
                        "with --pattern)")
    p.add_argument("--pattern", metavar="N:M",
                   help="semi-structured sparsity: exactly N zeros in every M consecutive "
                        "input weights of each row, e.g. 2:4 or 4:8")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                   help="leave linears whose name matches REGEX dense (repeatable), e.g. "
                        "'layers\\.0\\.' or 'down_proj'")
    p.add_argument("--layerwise", choices=LAYERWISE_CHOICES, default="uniform",
                   help="uniform: every block gets --sparsity; owl: outlier-weighted "
                        "per-block sparsity (arXiv 2310.05175) with the same mean")
    p.add_argument("--owl-m", type=float, default=5.0,
                   help="OWL outlier threshold M (score > M x mean) (default: %(default)s)")
    p.add_argument("--owl-lambda", type=float, default=0.08,
                   help="OWL spread: block sparsity within +-lambda (default: %(default)s)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method-specific knob, e.g. block_size=128 or dampening=0.01 for "
                        "sparsegpt (repeatable; unknown keys are errors)")
    p.add_argument("--calib-samples", type=positive_int, default=32, metavar="N",
                   help="calibration sequences (default: %(default)s)")
    p.add_argument("--seq-len", type=positive_int, default=512, metavar="L",
                   help="tokens per calibration sequence (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed (default: 0)")
    p.add_argument("--calib-data", type=Path, metavar="FILE",
                   help="calibrate on FILE (plain text, or JSONL with a `text` field) instead "
                        "of the built-in Wikipedia text")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the before/after perplexity evaluation")
    p.add_argument("--forward-dtype", choices=FORWARD_DTYPES, default="auto",
                   help="dtype of the calibration forward passes; statistics are always "
                        "accumulated in fp32. auto = bf16 on GPUs and on CPUs with AMX/"
                        "AVX512-BF16, else fp32 (default: %(default)s)")
    add_eval_options(p, defaults_from_artifact=False)
    add_runtime_options(p)
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace) -> MethodConfig:
    knobs = {"method": args.method, "sparsity": args.sparsity, "pattern": args.pattern,
             "ignore": list(args.ignore), "layerwise": args.layerwise,
             "owl_m": args.owl_m, "owl_lambda": args.owl_lambda}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r} is not KEY=VALUE: write e.g. block_size=128")
        knobs[key.strip()] = yaml.safe_load(value)
    return MethodConfig.from_dict(knobs)


def run(args: argparse.Namespace) -> int:
    config = build_config(args)  # validate every knob before loading anything
    out: Path = args.out.expanduser()
    check_output_dir(out, args.overwrite)
    if args.calib_data is not None and not args.calib_data.is_file():
        raise UserError(f"--calib-data {args.calib_data} does not exist: pass a text or "
                        "JSONL file")
    device = resolve_device(args.device)
    progress = make_progress(args.quiet)
    start = time.perf_counter()
    loaded = load_model(args.model)
    job = CompressionRun(
        config=config,
        calibration=CalibrationSpec(args.calib_samples, args.seq_len, args.seed,
                                    args.calib_data),
        protocol=EvalProtocol(args.eval_seq_len, args.eval_windows),
        device=device, forward_dtype=resolve_forward_dtype(args.forward_dtype, device),
        evaluate=not args.no_eval, progress=progress)
    try:
        manifest = run_compression(loaded, job)
    finally:
        if progress is not None:
            progress.close()  # end the bars' lines before any error message
    save_lm_artifact(out, loaded, manifest, overwrite=args.overwrite)
    manifest["timing_seconds"]["wall_total"] = time.perf_counter() - start
    print(summary_table(manifest, out))
    write_json(args.json, {**manifest, "output": str(out)})
    return 0


def summary_table(manifest: dict, out: Path) -> str:
    metrics = manifest["metrics"]
    timing = manifest["timing_seconds"]
    rows = []
    for label, key in (("dense", "before"), (manifest["method"]["method"], "after")):
        if key in metrics:
            m = metrics[key]
            rows.append([label, m["wikipedia"]["ppl"], m["news"]["ppl"],
                         0.0 if key == "before" else manifest["sparsity"]["overall"]])
    if not rows:
        rows.append([manifest["method"]["method"], None, None, manifest["sparsity"]["overall"]])
    protocol = manifest["eval_protocol"]
    lines = [format_table(["model", "wiki ppl", "news ppl", "sparsity"], rows), "",
             f"perplexity: {protocol['windows']} windows x {protocol['seq_len']} tokens per "
             f"stream; sparsity over the pruned linears",
             f"compression: {timing['compress_total']:.1f} s (forward {timing['forward']:.1f} s, "
             f"method {timing['method']:.1f} s); total {timing.get('wall_total', 0):.1f} s",
             f"output: {out}"]
    return "\n".join(lines)
