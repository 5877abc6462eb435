"""`toolkit run recipe.yaml`: run an ordered list of compression stages (e.g. Wanda 50%
then GPTQ 4-bit) and save one artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from toolkit.commands.common import add_runtime_options
from toolkit.commands.compress_cmd import DEFAULT_MODEL
from toolkit.commands.job import add_job_options, run_recipe
from toolkit.recipe import load_recipe


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run a recipe (YAML list of stages) and save the artifact",
        description="Run the stages of a recipe in order on one model of any family "
                    "(language model, V-MoE, portrait segmenter), evaluate before and after "
                    "with the family's protocol, and save an artifact. See recipes/ for "
                    "examples; every artifact holds the recipe.yaml it came from, which names "
                    "the model it was made from.")
    p.add_argument("recipe", type=Path, metavar="RECIPE.yaml")
    p.add_argument("--model", help="registered name, HF directory or .gguf file "
                                   f"(default: the recipe's `model:`, else {DEFAULT_MODEL})")
    add_job_options(p)
    add_runtime_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe.expanduser())
    return run_recipe(recipe, args.model or recipe.model or DEFAULT_MODEL, args)
