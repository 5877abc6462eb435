"""A sweep point: its resolved recipe, its cache key and the files of its folder.

    OUT/points/<key>/
      job.json         what the worker runs (rewritten by every sweep that needs the point)
      recipe.yaml      the recipe `toolkit run` is given (absent for the dense model)
      artifact/        the artifact (`toolkit run --out`; the dense model saved as is)
      compress.json    the run's manifest + wall seconds + peak RSS (written after it)
      eval.json        `toolkit eval artifact --suite kick --json`
      done.json        written last, atomically: compress and eval are complete
      bench-<fmt>-<k>/ export + `toolkit bench` (renamed into place when complete)
      log.txt          the worker's output, for a point that failed
      .worker.lock     held by the worker running the point (toolkit/sweep/point_lock.py)

key = sha256 of the resolved recipe (every knob with its default, calibration, perplexity
protocol, model), the model's identity (a registered name; a path with its files' names,
sizes and mtimes), the calibration file's bytes, the kick protocol, the toolkit and suite
versions, and the source of each stage's method (the modules of its config and handler),
so editing a method recomputes the points that use it and no others. A point's name is
not in it: two sweeps that share a recipe share its folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
from pathlib import Path
from typing import Any

from compress.config import handler_for
from models.registry import is_registered
from toolkit.errors import UserError
from toolkit.eval.kick import SUITE_VERSION
from toolkit.recipe import Recipe
from toolkit.sweep.spec import BenchSpec, EvalSpec, SweepSpec

POINTS_DIR = "points"
JOB, RECIPE, ARTIFACT = "job.json", "recipe.yaml", "artifact"
COMPRESS, EVAL, DONE, LOG = "compress.json", "eval.json", "done.json", "log.txt"
KEY_CHARS = 16


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    key: str
    recipe: dict[str, Any]  # the saved form; `stages: []` is the dense model
    directory: Path

    @property
    def dense(self) -> bool:
        return not self.recipe["stages"]

    @property
    def done(self) -> bool:
        return (self.directory / DONE).is_file()


def resolve_model(model: str) -> str:
    """A registered name as is; a path absolute (so the saved recipe re-runs anywhere),
    refused when it does not exist."""
    if is_registered(model):
        return model
    path = Path(model).expanduser()
    if not path.exists():
        raise UserError(f"model {model} is neither a registered name nor an existing path: "
                        "pass --model NAME_OR_DIR (see `toolkit models`)")
    return str(path.resolve())


def model_identity(model: str) -> dict[str, Any]:
    """Enough to notice a changed model without hashing its gigabytes."""
    if is_registered(model):
        return {"name": model}
    path = Path(model)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {"path": model, "files": [[str(p.relative_to(path.parent)), p.stat().st_size,
                                      p.stat().st_mtime_ns] for p in files]}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _code_version() -> str:
    try:
        return importlib.metadata.version("edge-toolkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def point_recipe(spec_point, spec: SweepSpec, model: str) -> dict[str, Any]:
    """The recipe's saved form, naming `model`, with every knob's value written out."""
    if spec_point.recipe is None:
        calibration = dict(spec.calibration)
        return {"model": model, "calibration": calibration,
                "eval": spec.eval.recipe_eval(), "stages": []}
    recipe = dataclasses.replace(spec_point.recipe, model=model)
    calibration = recipe.calibration
    if calibration.file is not None:
        recipe = dataclasses.replace(recipe, calibration=dataclasses.replace(
            calibration, file=calibration.file.resolve()))
    return recipe.to_dict()


def method_sources(recipe: Recipe | None) -> str | None:
    """sha256 of the source files of the recipe's methods (config and handler modules)."""
    if recipe is None:
        return None
    files = set()
    for stage in recipe.stages:
        for thing in (type(stage), handler_for(stage)):
            source = inspect.getsourcefile(thing)
            if source:
                files.add(source)
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


def point_key(recipe: dict[str, Any], evaluation: EvalSpec, sources: str | None) -> str:
    data = recipe.get("calibration", {}).get("data")
    payload = {"recipe": recipe, "model": model_identity(recipe["model"]),
               "method_sources": sources,
               "calibration_sha256": _file_sha256(Path(data)) if data else None,
               "kick": evaluation.to_dict(), "suite": SUITE_VERSION,
               "toolkit": _code_version()}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def resolve_points(spec: SweepSpec, model: str, out: Path) -> list[Point]:
    points, by_key = [], {}
    for spec_point in spec.points:
        recipe = point_recipe(spec_point, spec, model)
        if recipe["calibration"].get("data") and not Path(
                recipe["calibration"]["data"]).is_file():
            raise UserError(f"sweep {spec.path}: calibration data "
                            f"{recipe['calibration']['data']} does not exist: fix the path")
        key = point_key(recipe, spec.eval, method_sources(spec_point.recipe))
        if key in by_key:
            raise UserError(f"sweep {spec.path}: points {by_key[key]!r} and "
                            f"{spec_point.name!r} are the same recipe: drop one")
        by_key[key] = spec_point.name
        points.append(Point(spec_point.name, key, recipe, out / POINTS_DIR / key))
    return points


def bench_dir_name(fmt: str, bench: BenchSpec) -> str:
    """The bench result's folder: the format and a hash of the bench protocol."""
    text = json.dumps({"format": fmt, **dataclasses.asdict(bench)}, sort_keys=True)
    return f"bench-{fmt}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def job_dict(point: Point, evaluation: EvalSpec, bench: BenchSpec, fmt: str | None,
             threads: int) -> dict[str, Any]:
    """What the worker reads from job.json."""
    return {"name": point.name, "key": point.key, "recipe": point.recipe,
            "eval": dataclasses.asdict(evaluation), "threads": threads,
            "bench": None if fmt is None else {"format": fmt,
                                               "dir": bench_dir_name(fmt, bench),
                                               **dataclasses.asdict(bench)}}


def needs_work(point: Point, bench_dir: str | None) -> bool:
    if not point.done:
        return True
    return bench_dir is not None and not (point.directory / bench_dir / "bench.json").is_file()
