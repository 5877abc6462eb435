"""`toolkit models`: the registered models and where each one's weights come from, then
the large decoder shapes `toolkit synth` writes as random-weight checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from models import list_models
from models.large_shapes import SHAPE_COLUMNS, large_shapes
from toolkit.commands.common import write_json
from toolkit.report import format_table


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the registered models",
                              description="List registered model names, their family, and "
                                          "where their weights come from, and the large "
                                          "shapes `toolkit synth` writes.")
    p.add_argument("--all", action="store_true",
                   help="include the tiny random-weight test models and test shapes")
    p.add_argument("--json", metavar="PATH", type=Path,
                   help="also write the list as JSON to PATH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    specs = list_models(include_fake=args.all)
    print(format_table(["name", "family", "weights", "description"],
                       [[s.name, s.family, s.weights, s.description] for s in specs]))
    shapes = large_shapes(include_test=args.all)
    print("\nLarge shapes (random weights: `toolkit synth SHAPE --out DIR`):")
    print(format_table(SHAPE_COLUMNS, [shape.table_row() for shape in shapes]))
    write_json(args.json, {"models": [
        {"name": s.name, "family": s.family, "weights": s.weights,
         "description": s.description, "test_only": s.fake} for s in specs],
        "shapes": [_shape_json(shape) for shape in shapes]})
    return 0


def _shape_json(shape) -> dict:
    return {"name": shape.name, "architecture": shape.architecture, "layers": shape.layers,
            "hidden": shape.hidden, "intermediate": shape.intermediate, "heads": shape.heads,
            "kv_heads": shape.kv_heads, "vocab": shape.vocab, "tied": shape.tied,
            "params": shape.param_count(), "fp32_gb": shape.size_gb(4),
            "bf16_gb": shape.size_gb(2), "source": shape.source, "test_only": shape.test}
