"""`toolkit compress`: one method from flags (a one-stage recipe, plus a distillation stage
for `--recover kd` when the method has no recovery of its own, or a LoRA stage for
`--recover lora`), run by the same job as
`toolkit run` for every model family, saved as an artifact."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import yaml

from compress.config import MethodConfig, registered_methods
from compress.distill import DistillConfig
from compress.experts import CRITERION_CHOICES
from compress.experts.drop import RECOVER_CHOICES
from compress.prune.base import LAYERWISE_CHOICES
from compress.quant.base import BACKENDS
from compress.quant.mixed_config import DEFAULT_SENSITIVITY
from compress.quant.sensitivity import SENSITIVITIES
from compress.recovery import LoraConfig
from compress.structured import ALLOCATIONS, CHANNEL_CRITERIA
from toolkit.commands.common import add_eval_options, add_runtime_options, positive_int
from toolkit.commands.job import add_job_options, run_recipe
from toolkit.errors import UserError
from toolkit.eval import EvalProtocol
from toolkit.recipe import CalibrationSpec, Recipe

DEFAULT_MODEL = "smollm2-135m"
# `distill` and `lora` are recovery stages (--recover kd / lora), not methods on their own:
# they need a teacher.
COMPRESSION_METHODS = sorted(set(registered_methods()) - {DistillConfig.method,
                                                           LoraConfig.method})
S = argparse.SUPPRESS  # method knobs appear in the namespace only when given


def _none_or_int(word: str):
    def parse(text: str) -> int | None:
        return None if text == word else positive_int(text)
    return parse


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "integers, e.g. 2,4") from None


# (flag, argparse keywords): the dest is the config field the flag sets.
METHOD_FLAGS: list[tuple[str, dict]] = [
    ("--sparsity", dict(type=float, help="pruning: fraction of zeros per output row, in "
                        "(0, 1) (default: 0.5, or N/M with --pattern); channel-prune: "
                        "fraction of expansion channels removed (default: 0.5)")),
    ("--pattern", dict(metavar="N:M", help="pruning: exactly N zeros in every M consecutive "
                       "input weights of each row, e.g. 2:4 or 4:8")),
    ("--layerwise", dict(choices=LAYERWISE_CHOICES, help="pruning: uniform, or owl "
                         "(outlier-weighted per-block sparsity, arXiv 2310.05175)")),
    ("--owl-m", dict(type=float, help="pruning: OWL outlier threshold M (default: 5)")),
    ("--owl-lambda", dict(type=float, help="pruning: OWL spread +-lambda (default: 0.08)")),
    ("--bits", dict(type=int, help="quantization: bits per weight code (rtn/gptq/awq and "
                    "palettize: 2, 3, 4, 6, 8) (default: 4)")),
    ("--group-size", dict(type=_none_or_int("channel"), metavar="G|channel",
                          help="rtn/gptq/awq: inputs sharing a scale (32, 64, 128), or "
                               "`channel` for one scale per output row (default: 64)")),
    ("--symmetric", dict(action="store_true", help="rtn/gptq/awq: symmetric grid, no zero "
                         "points (default: asymmetric)")),
    ("--act-order", dict(action=argparse.BooleanOptionalAction, help="gptq: quantize columns "
                         "by decreasing Hessian diagonal; --no-act-order for the input order "
                         "(default: on)")),
    ("--backend", dict(choices=BACKENDS, help="rtn/gptq/awq: `nncf` runs NNCF's "
                       "compress_weights instead, for comparison (default: toolkit)")),
    ("--group-rows", dict(type=_none_or_int("tensor"), metavar="R|tensor",
                          help="palettize: output rows sharing one lookup table, or `tensor` "
                               "(default: 16)")),
    ("--target-bits", dict(type=float, help="palettize/rtn/gptq: mixed bit-widths with this "
                           "average stored bits per weight (scales, zero points and tables "
                           "included), e.g. 3.7")),
    ("--bits-choices", dict(type=_int_list, metavar="B,B", help="palettize/rtn/gptq: "
                            "bit-widths the mixed allocation picks from (default: palettize "
                            "2,4; rtn/gptq 3,4,6)")),
    ("--table-bits", dict(type=_int_list, metavar="B,B", help="--target-bits: "
                          "widths the allocation may give the embedding table and LM head "
                          "(4,8; what --embedding-bits exports), inside the budget "
                          "(default: float, outside it)")),
    ("--sensitivity", dict(metavar="KIND", help="--target-bits: how a layer is "
                           f"judged at each width, one of {', '.join(SENSITIVITIES)} "
                           f"(default: {DEFAULT_SENSITIVITY}; measured: next-token KL "
                           "with that layer alone quantized)")),
    ("--criterion", dict(choices=sorted({*CRITERION_CHOICES, *CHANNEL_CRITERIA}),
                         help="drop-experts: how experts are ranked (MC-Suite, REAP, NAEE "
                         "reconstruction; random is the control) (default: frequency); "
                         "channel-prune: how expansion channels are ranked (taylor, "
                         "bn-scale, l1-filter, random) (default: taylor)")),
    ("--drop", dict(type=float, metavar="R", help="drop-experts: fraction of each routing "
                    "group's experts to remove, e.g. 0.25 (default: 0.25)")),
    ("--rounds", dict(type=positive_int, metavar="K", help="drop-experts: 1 = one-shot; K "
                      "rounds re-score between drops (default: 1)")),
    ("--recover", dict(choices=(*RECOVER_CHOICES, "lora"), help="`kd`: recover by distilling "
                       "from the model before compression (drop-experts: after each round; "
                       "channel-prune: per-pixel KL of the 3-class maps); `lora` (after "
                       "quantization or pruning): rank-r adapters beside the frozen "
                       "quantized or pruned linears, distilled from the dense model, "
                       "stored beside them (default: none)")),
    ("--allocation", dict(choices=ALLOCATIONS, help="channel-prune: the same share "
                          "of every block, one global ranking, or global-flops (least "
                          "importance per FLOP first; --sparsity is then the share of "
                          "expansion FLOPs removed) (default: uniform)")),
    ("--round-to", dict(type=positive_int, metavar="K", help="channel-prune: kept widths are "
                        "multiples of K, as phone kernels load 8 or 16 lanes (default: 8)")),
    ("--recover-steps", dict(type=positive_int, metavar="N", help="distillation steps with "
                             "--recover kd, per round for drop-experts (default: 100); "
                             "adapter training steps with --recover lora (default: 200)")),
    ("--lora-rank", dict(type=positive_int, metavar="R", help="--recover lora: adapter rank "
                         "(default: 16); other knobs via a recipe ({method: lora, ...})")),
    ("--weighted", dict(action=argparse.BooleanOptionalAction, help="palettize: weight "
                        "k-means by each input's activation energy (sensitive k-means); "
                        "--no-weighted clusters the weights alone, data-free (default: on)")),
]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compress", help="prune or quantize a model with one method and save it",
        description="Compress a model with one method, evaluate before and after, and save "
                    "an artifact (model files + recipe.yaml + toolkit.json). LLM methods "
                    "compress every linear layer inside the decoder blocks, block by block "
                    "on calibration text (embeddings and the LM head stay in floating "
                    "point); drop-experts removes experts of a MoE; channel-prune removes "
                    "expansion channels of a portrait segmenter. For several stages (e.g. "
                    "prune then quantize) use `toolkit run RECIPE.yaml`.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="registered name (see `toolkit models`), Hugging Face directory "
                        "with safetensors, or .gguf file (default: %(default)s)")
    p.add_argument("--method", default="wanda", choices=COMPRESSION_METHODS,
                   help="method (default: %(default)s)")
    for flag, kwargs in METHOD_FLAGS:
        p.add_argument(flag, default=S, **kwargs)
    p.add_argument("--ignore", action="append", default=S, metavar="REGEX",
                   help="leave linears whose name matches REGEX uncompressed (repeatable), "
                        "e.g. 'layers\\.0\\.' or 'down_proj'")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other knob of the method, e.g. block_size=128 or "
                        "dampening=0.01 (repeatable; unknown keys are errors)")
    p.add_argument("--calib-samples", type=positive_int, metavar="N",
                   help="calibration sequences (default: 32), or images for an image "
                        "model (default: 512; portraits: 64)")
    p.add_argument("--seq-len", type=positive_int, default=512, metavar="L",
                   help="tokens per calibration sequence (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed (default: 0)")
    p.add_argument("--calib-data", type=Path, metavar="FILE",
                   help="calibrate on FILE (plain text, or JSONL with a `text` field) instead "
                        "of the built-in Wikipedia text; for a portrait model a folder with "
                        "images/ and masks/ instead of synthetic portraits")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="torch intra-op CPU threads (default: torch's choice; on a busy or "
                        "shared machine 1 avoids threads waiting on each other)")
    add_job_options(p)
    add_eval_options(p, defaults_from_artifact=False)
    add_runtime_options(p)
    p.set_defaults(run=run)


def build_stages(args: argparse.Namespace) -> list[MethodConfig]:
    """The method's config from the flags given (a flag the method lacks is an error),
    followed by a distillation stage when `--recover kd` asks for one. Expert dropping
    recovers inside its own rounds instead, so there it stays a knob of the method."""
    given = vars(args)
    knobs = {flag[2:].replace("-", "_"): given[flag[2:].replace("-", "_")]
             for flag, _ in METHOD_FLAGS if flag[2:].replace("-", "_") in given}
    if "ignore" in given:
        knobs["ignore"] = list(given["ignore"])
    config_type = registered_methods()[args.method]
    fields = {f.name for f in dataclasses.fields(config_type)}
    recovery = None
    rank = knobs.pop("lora_rank", None)
    if rank is not None and knobs.get("recover") != "lora":
        raise UserError("--lora-rank needs --recover lora")
    if "recover" not in fields or knobs.get("recover") == "lora":
        recovery = _recovery_stage(knobs.pop("recover", "none"), knobs.pop("recover_steps", None),
                                   rank)
    for key in knobs:
        if key not in fields:
            flags = sorted("--" + f.replace("_", "-") for f in fields)
            raise UserError(f"--{key.replace('_', '-')} does not apply to --method "
                            f"{args.method}: its knobs are {', '.join(flags)}")
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r} is not KEY=VALUE: write e.g. block_size=128")
        knobs[key.strip()] = yaml.safe_load(value)
    config = MethodConfig.from_dict({"method": args.method, **knobs})
    return [config] if recovery is None else [config, recovery]


def _recovery_stage(recover: str, steps: int | None,
                    rank: int | None = None) -> MethodConfig | None:
    if recover == "none":
        if steps is not None:
            raise UserError("--recover-steps needs --recover kd or --recover lora")
        return None
    config_type = LoraConfig if recover == "lora" else DistillConfig
    knobs = {"steps": steps, "rank": rank}
    return config_type(**{k: v for k, v in knobs.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    stages = build_stages(args)  # validate every knob before loading anything
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(
        stages=stages,
        calibration=CalibrationSpec(args.calib_samples, args.seq_len, args.seed,
                                    args.calib_data.expanduser() if args.calib_data else None),
        protocol=EvalProtocol(args.eval_seq_len, args.eval_windows),
        model=args.model)
    return run_recipe(recipe, args.model, args)
