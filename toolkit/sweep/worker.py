"""One sweep point in its own process: `python -m toolkit.sweep.worker POINT_DIR`.

Runs, in this order and each only when its output is missing (so a killed point resumes
at the step it was in):

1. compress: `toolkit run recipe.yaml --out artifact --no-eval` (the same job), then
   compress.json with the manifest, the wall time and this process's peak RSS, read
   right after the job (ru_maxrss is the peak so far, so the evaluation after it does not
   count). The dense model (no stages) is saved as an artifact as it is, so its size on
   disk and its export are measured like every other point's.
2. eval: `toolkit eval artifact --suite kick --json eval.json` with the sweep's protocol.
3. done.json, written last and atomically.
4. with a bench format: `toolkit export FORMAT` and `toolkit bench` on the file, into a
   staging folder renamed into place when both are complete.

The worker holds the point's lock while it runs and ends with the sweep that started it
(toolkit/sweep/point_lock.py), so a resumed sweep never runs a point twice at once.

A command's failure ends the worker with its exit code; its one-line error is the last
line of stderr, which the sweep reports.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from toolkit.data.cache import write_text_atomic
from toolkit.sweep.point_lock import end_with_parent, point_lock
from toolkit.sweep.points import ARTIFACT, COMPRESS, DONE, EVAL, JOB, RECIPE

EXPORT_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}


class StepFailed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def toolkit(*argv: object) -> None:
    from toolkit.cli import main

    code = main([str(arg) for arg in argv])
    if code != 0:
        raise StepFailed(code)


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs kB


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def compress(point: Path, job: dict) -> None:
    artifact, start = point / ARTIFACT, time.perf_counter()
    if job["recipe"]["stages"]:
        from toolkit.recipe import recipe_from_dict

        recipe = recipe_from_dict(job["recipe"], where=f"point {job['name']}")
        write_text_atomic(point / RECIPE, recipe.to_yaml())
        report = point / ".compress-manifest.json"
        toolkit("run", point / RECIPE, "--out", artifact, "--overwrite", "--no-eval",
                "--quiet", "--json", report)
        manifest = json.loads(report.read_text(encoding="utf-8"))
        report.unlink()
    else:
        manifest = save_dense(job["recipe"]["model"], artifact)
    write_json_atomic(point / COMPRESS, {
        "manifest": manifest, "wall_seconds": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(), "dense": not job["recipe"]["stages"]})


def save_dense(model: str, artifact: Path) -> dict:
    from models import load_model
    from toolkit.artifacts import save_model_artifact
    from toolkit.manifest import library_versions, timestamp

    loaded = load_model(model)
    manifest = {"source_model": model, "model_name": loaded.name, "recipe": None,
                "versions": library_versions(), "created": timestamp()}
    if artifact.exists():  # a dense save killed after its rename: write it again
        shutil.rmtree(artifact)
    save_model_artifact(artifact, loaded, manifest)
    return manifest


def evaluate(point: Path, job: dict) -> None:
    spec = job["eval"]
    argv: list[object] = ["eval", point / ARTIFACT, "--suite", "kick", "--quiet",
                          "--eval-windows", spec["windows"] or "all",
                          "--eval-seq-len", spec["seq_len"], "--json", point / EVAL]
    if spec["kick_questions"]:
        argv += ["--kick-questions", spec["kick_questions"]]
    if spec["mmlu_questions"]:
        argv += ["--mmlu-questions", spec["mmlu_questions"]]
    toolkit(*argv)


def bench(point: Path, job: dict) -> None:
    spec = job["bench"]
    final = point / spec["dir"]
    staging = point / f".{spec['dir']}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a killed bench starts over
    staging.mkdir()
    model_file = staging / f"model{EXPORT_SUFFIX[spec['format']]}"
    embedding = (["--embedding-bits", spec["embedding_bits"]]
                 if spec.get("embedding_bits") else [])
    toolkit("export", spec["format"], "--model", point / ARTIFACT, "--out", model_file,
            "--max-context", spec["max_context"], "--quiet", *embedding,
            "--json", staging / "export.json")
    toolkit("bench", model_file, "--quiet", "--runs", spec["runs"], "--warmup",
            spec["warmup"], "--min-seconds", spec["min_seconds"], "--threads",
            spec["threads"], "--prompt-tokens", spec["prompt_tokens"], "--max-context",
            spec["max_context"], "--json", staging / "bench.json")
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def run_point(point: Path) -> None:
    job = json.loads((point / JOB).read_text(encoding="utf-8"))
    import torch

    torch.set_num_threads(job["threads"])
    if not (point / COMPRESS).is_file():
        compress(point, job)
    if not (point / EVAL).is_file():
        evaluate(point, job)
    if not (point / DONE).is_file():
        write_json_atomic(point / DONE, {"key": job["key"], "recipe": job["recipe"]})
    if job["bench"] and not (point / job["bench"]["dir"] / "bench.json").is_file():
        bench(point, job)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m toolkit.sweep.worker POINT_DIR", file=sys.stderr)
        return 2
    end_with_parent()
    point = Path(argv[0])
    try:
        with point_lock(point, lambda line: print(line, file=sys.stderr, flush=True)):
            run_point(point)
    except StepFailed as exc:
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
