"""A recipe: an ordered list of method configs, plus the calibration and evaluation they
ran with. YAML is only its saved form; `toolkit compress` builds a one-stage recipe from
its flags and `toolkit run recipe.yaml` reads one. Every artifact stores the recipe it
came from (in toolkit.json and as recipe.yaml), so `toolkit run DIR/recipe.yaml`
repeats the run.

    model: smollm2-135m          # optional; `toolkit run --model` overrides it
    calibration: {samples: 32, seq_len: 512, seed: 0}
    eval: {windows: 16, seq_len: 512}
    stages:
      - {method: wanda, sparsity: 0.5}
      - {method: gptq, bits: 4, group_size: 128}

The same shape runs every model family: for an image model `samples` counts images
(default: the family's own, 512 for a V-MoE, 64 portraits), `seq_len` is unused and
`data` is a portrait folder (images/ and masks/) instead of a text file; `eval:` sets the
perplexity protocol of language models only. A saved recipe names the model it ran on
(a registry name or an absolute path), so re-running it repeats the run from any
directory.

Unknown keys are errors that name the key. Quantization writes packed weights, so it
must be the last stage (only `recover`, which trains the packed scales and keeps the codes,
may follow it, and `lora`, whose adapters sit beside the frozen packed or pruned weights
and so must itself be last): a pruning stage after it would undo the packing.
Distillation learns from the model before the first stage, so it cannot be the first
stage. A rotation (`rotate`) rewrites every weight, so it must be the first stage: after
pruning it would fill the zeros, after quantization it would undo the grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from compress.config import MethodConfig
from compress.distill import DistillConfig
from compress.errors import CompressError
from compress.quant import QuantConfig
from compress.recovery import LoraConfig, RecoverConfig
from compress.rotate import RotateConfig
from toolkit.errors import UserError
from toolkit.eval import EvalProtocol
from toolkit.limits import check_seed

TOP_LEVEL_KEYS = ("model", "calibration", "eval", "stages")
CALIBRATION_KEYS = ("samples", "seq_len", "seed", "data")
EVAL_KEYS = ("windows", "seq_len")


@dataclasses.dataclass(frozen=True)
class CalibrationSpec:
    samples: int | None = None  # None: the family's default (32 sequences, 512 images...)
    seq_len: int = 512
    seed: int = 0
    # A user's text/JSONL instead of the Wikipedia pool; a portrait folder for portraits.
    file: Path | None = None


@dataclasses.dataclass
class Recipe:
    stages: list[MethodConfig]
    calibration: CalibrationSpec = dataclasses.field(default_factory=CalibrationSpec)
    protocol: EvalProtocol = dataclasses.field(default_factory=EvalProtocol)
    model: str | None = None

    def __post_init__(self) -> None:
        check_stage_order(self.stages)

    @property
    def name(self) -> str:
        """e.g. "wanda+gptq"."""
        return "+".join(stage.method for stage in self.stages)

    def to_dict(self) -> dict[str, Any]:
        calibration: dict[str, Any] = {} if self.calibration.samples is None \
            else {"samples": self.calibration.samples}
        calibration.update({"seq_len": self.calibration.seq_len,
                            "seed": self.calibration.seed})
        if self.calibration.file is not None:
            calibration["data"] = str(self.calibration.file)
        out: dict[str, Any] = {"model": self.model} if self.model else {}
        out.update({"calibration": calibration, "eval": self.protocol.to_dict(),
                    "stages": [stage.to_dict() for stage in self.stages]})
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def check_stage_order(stages: list[MethodConfig]) -> None:
    if not stages:
        raise UserError("the recipe has no stages: list at least one under `stages:`")
    if isinstance(stages[0], DistillConfig):
        raise UserError("stage 1 is distill, which learns from the model before the first "
                        "stage: put a compression stage (e.g. channel-prune, drop-experts, "
                        "wanda) before it")
    for index, stage in enumerate(stages[1:], start=2):
        if isinstance(stage, RotateConfig):
            raise UserError(f"stage {index} is rotate, which rewrites every weight (it would "
                            "fill pruned zeros and undo a quantization grid): make rotate "
                            "the first stage")
    for index, stage in enumerate(stages[:-1]):
        if isinstance(stage, QuantConfig):
            later = next((i for i in range(index + 1, len(stages))
                          if not isinstance(stages[i], RecoverConfig | LoraConfig)), None)
            if later is not None:
                raise UserError(f"stage {later + 1} ({stages[later].method}) comes after "
                                f"quantization ({stage.method}): quantization must be the "
                                "last stage (only recover or lora may follow it)")
    for index, stage in enumerate(stages[:-1], start=1):
        if isinstance(stage, LoraConfig):  # adapters sit on the final packed weights
            raise UserError(f"stage {index} is lora, which adapts the final compressed "
                            f"weights, but {stages[index].method} follows it: make lora the "
                            "last stage")


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    """Build a recipe from its saved form; every unknown key is an error naming it."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping with a `stages:` list")
    _reject_unknown(data, TOP_LEVEL_KEYS, where)
    stages_data = data.get("stages")
    if not isinstance(stages_data, list) or not stages_data:
        raise UserError(f"{where}: `stages:` must be a non-empty list of methods")
    stages = []
    for index, stage in enumerate(stages_data, start=1):
        if not isinstance(stage, dict) or "method" not in stage:
            raise UserError(f"{where}: stage {index} must be a mapping with a `method:` key")
        try:
            stages.append(MethodConfig.from_dict(stage))
        except CompressError as exc:
            raise UserError(f"{where}: stage {index}: {exc}") from None
        except TypeError as exc:  # a value of the wrong type reaching __post_init__
            raise UserError(f"{where}: stage {index}: {exc}") from None
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise UserError(f"{where}: `model:` must be a name or a path")
    return Recipe(stages, _calibration(data.get("calibration") or {}, where),
                  _protocol(data.get("eval") or {}, where), model)


def load_recipe(path: Path) -> Recipe:
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist: pass a YAML file (see recipes/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"recipe {path} is not valid YAML ({reason}): fix the file") from None
    return recipe_from_dict(data, where=f"recipe {path}")


def _reject_unknown(data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = [key for key in data if key not in known]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}: valid keys are "
                        f"{', '.join(known)}")


def _calibration(data: Any, where: str) -> CalibrationSpec:
    if not isinstance(data, dict):
        raise UserError(f"{where}: `calibration:` must be a mapping")
    _reject_unknown(data, CALIBRATION_KEYS, f"{where}: calibration")
    spec = CalibrationSpec()
    samples, seq_len = data.get("samples", spec.samples), data.get("seq_len", spec.seq_len)
    seed = data.get("seed", spec.seed)
    for key, value in (("samples", samples), ("seq_len", seq_len), ("seed", seed)):
        if key == "samples" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or (key != "seed" and value < 1):
            raise UserError(f"{where}: calibration {key} must be a positive integer, "
                            f"not {value!r}")
    check_seed(seed, f"{where}: calibration seed")
    file = Path(data["data"]).expanduser() if data.get("data") else None
    return CalibrationSpec(samples, seq_len, seed, file)


def _protocol(data: Any, where: str) -> EvalProtocol:
    if not isinstance(data, dict):
        raise UserError(f"{where}: `eval:` must be a mapping")
    _reject_unknown(data, EVAL_KEYS, f"{where}: eval")
    windows = data.get("windows", EvalProtocol().windows)
    seq_len = data.get("seq_len", EvalProtocol().seq_len)
    if windows != "all" and (isinstance(windows, bool) or not isinstance(windows, int)
                             or windows < 1):
        raise UserError(f"{where}: eval windows must be a positive integer or `all`")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise UserError(f"{where}: eval seq_len must be an integer >= 2")
    return EvalProtocol(seq_len, None if windows == "all" else windows)
