"""What `toolkit compress` and `toolkit run` share once they hold a recipe: load, run
the stages, save the artifact, print the summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from models import load_model
from toolkit.artifacts import check_output_dir
from toolkit.commands.common import write_json
from toolkit.errors import UserError
from toolkit.hardware import FORWARD_DTYPES, resolve_device, resolve_forward_dtype
from toolkit.pipeline import CompressionRun, Recipe, run_compression, save_result
from toolkit.progress import make_progress
from toolkit.report import format_table


def add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the before/after perplexity evaluation")
    p.add_argument("--forward-dtype", choices=FORWARD_DTYPES, default="auto",
                   help="dtype of the calibration forward passes; statistics are always "
                        "accumulated in fp32. auto = bf16 on GPUs and on CPUs with AMX/"
                        "AVX512-BF16, else fp32 (default: %(default)s)")


def run_recipe(recipe: Recipe, model_spec: str, args: argparse.Namespace) -> int:
    out: Path = args.out.expanduser()
    check_output_dir(out, args.overwrite)
    calib_file = recipe.calibration.file
    if calib_file is not None and not calib_file.is_file():
        raise UserError(f"--calib-data {calib_file} does not exist: pass a text or JSONL file")
    device = resolve_device(args.device)
    progress = make_progress(args.quiet)
    start = time.perf_counter()
    loaded = load_model(model_spec)
    if loaded.quantized:
        raise UserError(f"{model_spec} is already quantized: start from the float model "
                        "(its toolkit.json names it under source_model)")
    job = CompressionRun(recipe=recipe, device=device,
                         forward_dtype=resolve_forward_dtype(args.forward_dtype, device),
                         evaluate=not args.no_eval, progress=progress)
    try:
        result = run_compression(loaded, job)
    finally:
        if progress is not None:
            progress.close()  # end the bars' lines before any error message
    save_result(out, loaded, result, recipe, overwrite=args.overwrite)
    manifest = result.manifest
    manifest["timing_seconds"]["wall_total"] = time.perf_counter() - start
    print(summary_table(manifest, out))
    write_json(args.json, {**manifest, "output": str(out)})
    return 0


def summary_table(manifest: dict, out: Path) -> str:
    metrics, timing = manifest["metrics"], manifest["timing_seconds"]
    quant = manifest.get("quantization")
    bits = quant["bits_per_weight"] if quant else None
    sparsity = manifest["sparsity"]["overall"]
    rows = []
    if "before" in metrics:
        m = metrics["before"]
        rows.append(["dense", m["wikipedia"]["ppl"], m["news"]["ppl"], 0.0, None])
    after = metrics.get("after")
    rows.append([manifest["method"]["method"], after["wikipedia"]["ppl"] if after else None,
                 after["news"]["ppl"] if after else None, sparsity, bits])
    protocol = manifest["eval_protocol"]
    lines = [format_table(["model", "wiki ppl", "news ppl", "sparsity", "bits/weight"], rows),
             "", f"perplexity: {protocol['windows']} windows x {protocol['seq_len']} tokens "
             "per stream; sparsity and bits over the decoder-block linears (bits include "
             "scales, zero points and lookup tables)",
             f"weights on disk: {manifest['files']['weights_bytes'] / 1e6:.1f} MB",
             f"compression: {timing['compress_total']:.1f} s (forward {timing['forward']:.1f} s, "
             f"method {timing['method']:.1f} s); total {timing.get('wall_total', 0):.1f} s",
             f"output: {out}"]
    return "\n".join(lines)
