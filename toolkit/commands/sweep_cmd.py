"""`toolkit sweep SPEC.yaml --out DIR`: run many recipes on one model (a grid and/or explicit
points), each as an independent job, cached by recipe so a killed sweep resumes, and
report size, bits, perplexity and factoid accuracy (and latency with --bench) with the
Pareto fronts; `--budget` picks the best point within limits and writes its recipe.
The pieces live in toolkit/sweep/."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import secrets
from pathlib import Path

from models.staging import pid_alive
from toolkit.commands.common import positive_int
from toolkit.data.cache import write_text_atomic
from toolkit.errors import UserError

MARKER, LOCK, TOKEN = ".edge-toolkit-sweep", ".sweep.lock", ".ray-token"
BENCH_FORMATS = ("onnx", "tflite", "coreml")
BENCH_NEEDS = {"onnx": ("onnxruntime", "onnx"), "tflite": ("ai_edge_litert", "litert")}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a grid or list of recipes and report the Pareto fronts",
        description="Expand SPEC.yaml (see sweeps/) into recipes; run each point as its own "
                    "job (`toolkit run`, then `toolkit eval --suite kick`, and with --bench "
                    "`toolkit export` + `toolkit bench`), in a local pool of processes or on "
                    "a Ray cluster. Points are cached under DIR/points/ by a hash of the "
                    "recipe, model and protocol: re-running skips finished points and "
                    "resumes unfinished ones. Writes DIR/results.json, results.md, "
                    "report.html and pareto-*.png.")
    p.add_argument("spec", type=Path, metavar="SPEC.yaml")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="sweep folder: new, or an earlier sweep's to resume it")
    p.add_argument("--model", help="registered name, HF directory or .gguf file "
                                   "(default: the spec's `model:`)")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="points run at once on this machine (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="torch threads per point (default: CPU cores / --jobs; 1 per Ray "
                        "task, which reserves that many CPUs)")
    p.add_argument("--bench", choices=BENCH_FORMATS, metavar="FORMAT",
                   help="also export each point (onnx or tflite) and time it with "
                        "`toolkit bench` (the spec's `bench:` settings); coreml files run "
                        "only on Apple devices and are refused")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run the points as Ray tasks on this cluster (HOST:PORT, "
                        "ray://HOST:PORT, or auto); DIR must be on storage every node sees")
    p.add_argument("--ray-timeout", type=float, default=15.0, metavar="S",
                   help="seconds to wait for the Ray cluster to answer (default: %(default)s)")
    p.add_argument("--budget", metavar="LIMITS",
                   help="e.g. size=150MB,latency=40ms: print the best point within the "
                        "limits (lowest wiki perplexity, then closed-book) and write it as "
                        "DIR/best-<limits>.yaml; exit 2 when none fits")
    p.add_argument("--quiet", action="store_true", help="no per-point progress lines")
    p.set_defaults(run=run)


def _check_bench(fmt: str | None) -> None:
    if fmt == "coreml":
        raise UserError("--bench coreml: Core ML files run only on Apple devices and "
                        "`toolkit bench` does not time them here: use --bench onnx or tflite")
    if fmt is not None:
        module, extra = BENCH_NEEDS[fmt]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--bench {fmt} needs {module}: pip install "
                            f"'edge-toolkit[{extra}]'")


def _check_out(out: Path) -> None:
    """An existing --out must be an earlier sweep's folder (resumed), never another one."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(f"--out {out} holds files that are not a sweep's: choose a new folder "
                        "or an earlier sweep's to resume it")


def _lock(out: Path) -> Path:
    lock = out / LOCK
    try:
        pid = int(lock.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and pid != os.getpid() and pid_alive(pid):
        raise UserError(f"--out {out} is in use by another sweep (pid {pid}): wait for it or "
                        "choose another folder")
    write_text_atomic(lock, f"{os.getpid()}\n")
    return lock


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    from toolkit.sweep.budget import parse_budget
    from toolkit.sweep.points import resolve_model, resolve_points
    from toolkit.sweep.spec import load_spec

    budget = parse_budget(args.budget) if args.budget else None
    _check_bench(args.bench)
    if not args.ray_timeout > 0:
        raise UserError(f"--ray-timeout {args.ray_timeout:g} must be > 0 seconds")
    spec = load_spec(args.spec.expanduser())
    model = args.model or spec.model
    if not model:
        raise UserError(f"sweep {args.spec} names no model: add `model:` or pass --model")
    if budget is not None and "latency" in budget.limits and not args.bench:
        raise UserError("--budget latency needs a latency: add --bench onnx or tflite")
    out = args.out.expanduser()
    _check_out(out)
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("toolkit sweep plots with matplotlib: pip install "
                        "'edge-toolkit[sweep]'")
    points = resolve_points(spec, resolve_model(model), out.absolute())
    if args.ray:
        from toolkit.sweep.ray_run import reachable_cluster

        args.ray = reachable_cluster(args.ray, args.ray_timeout)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    lock = _lock(out)
    try:
        return _sweep(args, spec, points, out, budget)
    except KeyboardInterrupt:
        raise UserError(f"interrupted: finished points are kept under {out}; run the same "
                        "command again to resume") from None
    finally:
        lock.unlink(missing_ok=True)


def _sweep(args, spec, points, out: Path, budget) -> int:
    from toolkit.sweep.execute import run_local
    from toolkit.sweep.points import JOB, bench_dir_name, job_dict, needs_work
    from toolkit.sweep.rows import failed_row, point_row

    bench_dir = bench_dir_name(args.bench, spec.bench) if args.bench else None
    # Locally the cores are shared by --jobs points; a Ray task reserves what it uses.
    threads = args.threads or (1 if args.ray else max(1, (os.cpu_count() or 1) // args.jobs))
    todo = [p for p in points if needs_work(p, bench_dir)]
    for point in points:
        if point not in todo:
            _say(args, f"[sweep] {point.name}: finished earlier, reused")
    for point in todo:
        point.directory.mkdir(parents=True, exist_ok=True)
        job = job_dict(point, spec.eval, spec.bench, args.bench, threads)
        write_text_atomic(point.directory / JOB, json.dumps(job, indent=2) + "\n")
    by_key = {p.key: p for p in points}
    errors: dict[str, str] = {}
    count = iter(range(1, len(todo) + 1))

    def on_done(outcome) -> None:
        name = by_key[outcome.key].name
        if outcome.ok:
            _say(args, f"[sweep] {next(count)}/{len(todo)} {name}: done in "
                       f"{outcome.seconds:.0f} s")
        else:
            errors[outcome.key] = outcome.error or "failed"
            _say(args, f"[sweep] {next(count)}/{len(todo)} {name}: failed: {outcome.error}")

    work = [(str(p.directory), p.key) for p in todo]
    if args.ray and work:
        from toolkit.sweep.ray_run import run_ray

        token = secrets.token_hex(16)
        write_text_atomic(out / TOKEN, token + "\n")
        run_ray(work, args.ray, threads, out / TOKEN, token, on_done)
    elif work:
        run_local(work, args.jobs, on_done)
    rows = [failed_row(p, errors[p.key]) if p.key in errors else point_row(p, bench_dir)
            for p in points]
    return _finish(args, spec, rows, out, budget, errors, points)


def _finish(args, spec, rows, out: Path, budget, errors, points) -> int:
    from toolkit.sweep.report import write_reports

    header = {"spec": str(args.spec), "model": points[0].recipe["model"],
              "calibration": spec.calibration, "eval": spec.eval.to_dict(),
              "bench": None if not args.bench else {"format": args.bench,
                                                    **dataclasses.asdict(spec.bench)}}
    print(write_reports(out, header, rows), end="")
    print(f"results: {out / 'results.json'}; report: {out / 'report.html'}")
    code = 0 if budget is None else _pick(args, rows, out, budget)
    if errors:
        first = next(p for p in points if p.key in errors)
        raise UserError(f"{len(errors)} of {len(points)} points failed (first: {first.name}: "
                        f"{errors[first.key]}; log: {first.directory / 'log.txt'}): fix it "
                        "and run again; finished points are kept")
    return code


def _pick(args, rows, out: Path, budget) -> int:
    from toolkit.sweep.budget import best_within, closest, over_text, recipe_text

    best = best_within(rows, budget)
    if best is None:
        near = closest(rows, budget)
        if near is None:
            raise UserError(f"--budget {budget.text}: no point has the measurements it needs")
        raise UserError(f"--budget {budget.text}: no point fits ({budget.describe()}); the "
                        f"closest is {near['name']}: {over_text(near, budget)}")
    closed = best.get("closed_book_pct")
    print(f"best within {budget.describe()}: {best['name']} (wiki ppl {best['wiki_ppl']:.3f}, "
          + (f"closed-book {closed:.1f}%, " if closed is not None else "")
          + f"{best['size_mb']:.2f} MB"
          + (f", {best['latency_ms']:.3f} ms" if best.get("latency_ms") else "") + ")")
    if not best["recipe"]["stages"]:
        print("the dense model fits the budget: no compression recipe to write")
        return 0
    path = out / f"best-{budget.slug}.yaml"
    write_text_atomic(path, recipe_text(best, budget, str(args.spec)))
    print(f"recipe: {path} (toolkit run {path} --out DIR)")
    return 0
