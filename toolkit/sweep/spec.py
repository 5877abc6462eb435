"""The sweep spec: one YAML file, parsed safely and strictly (an unknown key anywhere is an
error naming it and the allowed ones).

    model: smollm2-135m                       # `toolkit sweep --model` overrides it
    calibration: {samples: 32, seq_len: 512, seed: 0}   # as in a recipe
    eval:                                     # the kick suite's protocol for every point
      windows: 16                             # perplexity windows per stream, or all
      seq_len: 512
      kick_questions: 100                     # factoid questions (default: all 213)
      mmlu_questions: 20                      # MMLU dev questions (default 120; all)
    bench: {runs: 20, warmup: 3, min_seconds: 2, threads: 1, prompt_tokens: 64,
            max_context: 512}                 # used with --bench FORMAT only
    grid: {stages: [...]}                     # see toolkit/sweep/grid.py
    points:                                   # explicit recipes
      - {name: dense, stages: []}             # no stages: the model itself
      - name: wanda50-gptq4
        stages: [{method: wanda, sparsity: 0.5}, {method: gptq, bits: 4, group_size: 64}]

Every point's stages go through the recipe parser (toolkit.recipe) here, so a bad method
or knob fails before any work, naming the point.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import UserError
from toolkit.recipe import Recipe, recipe_from_dict
from toolkit.sweep.grid import expand_grid

TOP_LEVEL_KEYS = ("model", "calibration", "eval", "bench", "grid", "points")
EVAL_KEYS = ("windows", "seq_len", "kick_questions", "mmlu_questions")
BENCH_KEYS = ("runs", "warmup", "min_seconds", "threads", "prompt_tokens", "max_context",
              "embedding_bits")
POINT_KEYS = ("name", "stages")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    windows: int | None = 16  # None: every window (`all`)
    seq_len: int = 512
    kick_questions: int | None = None  # None: all 213
    mmlu_questions: int | str | None = None  # None: toolkit eval's default; or "all"

    def recipe_eval(self) -> dict[str, Any]:
        """The perplexity part, as a recipe's `eval:` writes it."""
        return {"windows": "all" if self.windows is None else self.windows,
                "seq_len": self.seq_len}

    def to_dict(self) -> dict[str, Any]:
        return {**self.recipe_eval(), "kick_questions": self.kick_questions or "all",
                "mmlu_questions": self.mmlu_questions}


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    runs: int = 20
    warmup: int = 3
    min_seconds: float = 2.0
    threads: int = 1
    prompt_tokens: int = 64
    max_context: int = 512
    # `toolkit export --embedding-bits`: 4 or 8 quantizes the embedding table and LM head
    # in the exported file (null keeps them float). On a small LLM they are most of the
    # file (SmolLM2-135M: 113 MB of fp32), so a size budget is decided by this.
    embedding_bits: int | None = None


@dataclasses.dataclass(frozen=True)
class PointSpec:
    name: str
    stages: list[dict]  # as the spec wrote them; [] is the dense model
    recipe: Recipe | None  # the parsed recipe (None for the dense model)


@dataclasses.dataclass
class SweepSpec:
    path: Path
    model: str | None
    calibration: dict[str, Any]
    eval: EvalSpec
    bench: BenchSpec
    points: list[PointSpec]


def load_spec(path: Path) -> SweepSpec:
    where = f"sweep {path}"
    if not path.is_file():
        raise UserError(f"{where} does not exist: pass a YAML file (see sweeps/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{where} is not valid YAML ({reason}): fix the file") from None
    return spec_from_dict(data, path)


def spec_from_dict(data: Any, path: Path) -> SweepSpec:
    where = f"sweep {path}"
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping with `grid:` and/or `points:`")
    _reject_unknown(data, TOP_LEVEL_KEYS, where)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise UserError(f"{where}: `model:` must be a registered name or a path")
    calibration = _mapping(data.get("calibration"), "calibration", where)
    evaluation = _eval(_mapping(data.get("eval"), "eval", where), where)
    bench = _bench(_mapping(data.get("bench"), "bench", where), where)
    named: list[tuple[str, list[dict]]] = []
    if "grid" in data:
        named += expand_grid(data["grid"], where)
    if "points" in data:
        named += _points(data["points"], where)
    if not named:
        raise UserError(f"{where} has no points: add a `grid:` or a `points:` list")
    seen: set[str] = set()
    for name, _ in named:
        if name in seen:
            raise UserError(f"{where}: two points are named {name!r}: rename one")
        seen.add(name)
    # The shared sections are checked once through the recipe parser, with or without
    # stages (a dense-only sweep still has its calibration and eval read strictly).
    shared = {"calibration": calibration, "eval": evaluation.recipe_eval()}
    _check_shared(shared, where)
    points = [PointSpec(name, stages, recipe_from_dict({**shared, "stages": stages},
                                                       where=f"{where}: point {name!r}")
                        if stages else None)
              for name, stages in named]
    return SweepSpec(path, model, calibration, evaluation, bench, points)


def _check_shared(shared: dict, where: str) -> None:
    """The recipe parser's checks of calibration and eval; the placeholder stage (magnitude
    with its defaults) always parses, so any error is about the shared sections."""
    recipe_from_dict({**shared, "stages": [{"method": "magnitude"}]}, where=where)


def _reject_unknown(data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = [key for key in data if key not in known]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}: valid keys are "
                        f"{', '.join(known)}")


def _mapping(value: Any, key: str, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: `{key}:` must be a mapping")
    return value


def _count(value: Any, key: str, where: str, *, allow_all: bool) -> int | str | None:
    if value is None or (allow_all and value == "all"):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or `all`" if allow_all else ""
        raise UserError(f"{where}: {key} must be a positive integer{extra}, not {value!r}")
    return value


def _eval(data: dict, where: str) -> EvalSpec:
    _reject_unknown(data, EVAL_KEYS, f"{where}: eval")
    default = EvalSpec()
    windows = _count(data.get("windows", default.windows), "eval windows", where,
                     allow_all=True)
    seq_len = _count(data.get("seq_len", default.seq_len), "eval seq_len", where,
                     allow_all=False)
    kick = _count(data.get("kick_questions"), "eval kick_questions", where, allow_all=True)
    mmlu = _count(data.get("mmlu_questions"), "eval mmlu_questions", where, allow_all=True)
    return EvalSpec(None if windows == "all" else windows, seq_len,
                    None if kick == "all" else kick, mmlu)


def _bench(data: dict, where: str) -> BenchSpec:
    _reject_unknown(data, BENCH_KEYS, f"{where}: bench")
    values = {}
    for field in dataclasses.fields(BenchSpec):
        if field.name not in data:
            continue
        value = data[field.name]
        if field.name == "embedding_bits":
            if value is not None and (isinstance(value, bool) or value not in (4, 8)):
                raise UserError(f"{where}: bench embedding_bits must be 4, 8 or null, "
                                f"not {value!r}")
        elif field.name == "min_seconds":
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UserError(f"{where}: bench min_seconds must be a number >= 0")
            value = float(value)
        elif field.name == "warmup":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{where}: bench warmup must be an integer >= 0")
        else:
            _count(value, f"bench {field.name}", where, allow_all=False)
        values[field.name] = value
    bench = BenchSpec(**values)
    if bench.prompt_tokens >= bench.max_context:
        raise UserError(f"{where}: bench prompt_tokens ({bench.prompt_tokens}) must be below "
                        f"max_context ({bench.max_context})")
    return bench


def _points(data: Any, where: str) -> list[tuple[str, list[dict]]]:
    if not isinstance(data, list) or not data:
        raise UserError(f"{where}: `points:` must be a non-empty list of "
                        "{name: ..., stages: [...]}")
    points = []
    for index, point in enumerate(data, start=1):
        if not isinstance(point, dict):
            raise UserError(f"{where}: point {index} must be a mapping with name and stages")
        _reject_unknown(point, POINT_KEYS, f"{where}: point {index}")
        name, stages = point.get("name"), point.get("stages")
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{where}: point {index} needs a `name:`")
        if not isinstance(stages, list):
            raise UserError(f"{where}: point {name!r}: `stages:` must be a list of stages "
                            "as recipes write them ([] for the dense model)")
        points.append((name.strip(), stages))
    return points
