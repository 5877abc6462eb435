"""What `toolkit compress` and `toolkit run` share once they hold a recipe, for every model
family: load the model once, run the stages (toolkit/pipeline.py), save the artifact,
print the family's summary."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from models import LoadedModel, load_model
from toolkit.artifacts import check_output_dir
from toolkit.commands.common import write_json
from toolkit.errors import UserError
from toolkit.hardware import FORWARD_DTYPES, resolve_device, resolve_forward_dtype
from toolkit.limits import check_lengths
from toolkit.pipeline import CompressionRun, Recipe, run_compression, save_result
from toolkit.progress import make_progress
from toolkit.streaming.engine_choice import add_engine_options, choose_engine
from toolkit.streaming.job import run_streaming_recipe


def add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the before/after evaluation (perplexity for language models, "
                        "accuracy/agreement or mask metrics for image models)")
    p.add_argument("--forward-dtype", choices=FORWARD_DTYPES, default="auto",
                   help="dtype of the calibration forward passes; statistics are always "
                        "accumulated in fp32. auto = bf16 on GPUs and on CPUs with AMX/"
                        "AVX512-BF16, else fp32 (default: %(default)s)")
    add_engine_options(p)


def run_recipe(recipe: Recipe, model_spec: str, args: argparse.Namespace) -> int:
    out: Path = args.out.expanduser()
    check_output_dir(out, args.overwrite)
    calib_file = recipe.calibration.file
    if calib_file is not None and not calib_file.exists():
        raise UserError(f"--calib-data {calib_file} does not exist: pass a text or JSONL file "
                        "(a folder with images/ and masks/ for a portrait model)")
    if choose_engine(recipe, model_spec, args) == "streaming":
        return run_streaming_recipe(recipe, model_spec, args)
    device = resolve_device(args.device)
    progress = make_progress(args.quiet)
    start = time.perf_counter()
    loaded = load_model(model_spec)
    check_lengths(loaded, recipe)  # before any calibration data is drawn
    if loaded.quantized:
        raise UserError(f"{model_spec} is already quantized: start from the float model "
                        "(its toolkit.json names it under source_model)")
    recipe = recipe_as_saved(recipe, loaded, model_spec)
    job = CompressionRun(recipe=recipe, device=device,
                         forward_dtype=resolve_forward_dtype(args.forward_dtype, device),
                         evaluate=not args.no_eval, progress=progress)
    try:
        result = run_compression(loaded, job)
    finally:
        if progress is not None:
            progress.close()  # end the bars' lines before any error message
    # The sample count the family chose when the recipe named none: a re-run repeats it.
    recipe = dataclasses.replace(recipe, calibration=dataclasses.replace(
        recipe.calibration, samples=result.calibration.samples))
    manifest = result.manifest
    manifest["recipe"] = recipe.to_dict()
    save_result(out, loaded, result, recipe, overwrite=args.overwrite)
    manifest["timing_seconds"]["wall_total"] = time.perf_counter() - start
    print(result.workflow.summary(manifest, out))
    write_json(args.json, {**manifest, "output": str(out)})
    return 0


def recipe_as_saved(recipe: Recipe, loaded: LoadedModel, model_spec: str) -> Recipe:
    """`recipe` naming the model it runs on as a registry name or an absolute path (and its
    calibration file absolute), so `toolkit run DIR/recipe.yaml` from any directory
    compresses the same model, not the recipe's default."""
    model = loaded.name or str(Path(model_spec).expanduser().resolve())
    calibration = recipe.calibration
    if calibration.file is not None:
        calibration = dataclasses.replace(calibration, file=calibration.file.resolve())
    return dataclasses.replace(recipe, model=model, calibration=calibration)
