"""`toolkit models`: the registered models and where each one's weights come from."""

from __future__ import annotations

import argparse
from pathlib import Path

from models import list_models
from toolkit.commands.common import write_json
from toolkit.report import format_table


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the registered models",
                              description="List registered model names, their family, and "
                                          "where their weights come from.")
    p.add_argument("--all", action="store_true",
                   help="include the tiny random-weight test models")
    p.add_argument("--json", metavar="PATH", type=Path,
                   help="also write the list as JSON to PATH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    specs = list_models(include_fake=args.all)
    print(format_table(["name", "family", "weights", "description"],
                       [[s.name, s.family, s.weights, s.description] for s in specs]))
    write_json(args.json, {"models": [
        {"name": s.name, "family": s.family, "weights": s.weights,
         "description": s.description, "test_only": s.fake} for s in specs]})
    return 0
