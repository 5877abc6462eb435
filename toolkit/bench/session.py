"""`run_bench`: several models timed in one interleaved run, each in its own worker.

Per model: file size, load time, first inference, then warm-up and timed runs of the
steady-state step (LLMs: one decode token after a P-token prefill; prefill is timed in
its own interleaved phase), peak RSS of its process, and the error of its outputs against
a PyTorch reference run on the same inputs.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.bench.timing import TimingStats, measure_interleaved
from toolkit.bench.worker import Worker
from toolkit.eval.kick_cache import file_fingerprint

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class BenchTarget:
    name: str  # as given on the command line
    path: str
    runtime: str  # onnxruntime | litert | torch


@dataclasses.dataclass
class BenchOptions:
    threads: int = 1
    warmup: int = 3
    runs: int = 20  # minimum timed runs per model
    min_seconds: float = 2.0
    prompt_tokens: int = 64
    prefill_runs: int = 5
    max_context: int = 512  # for PyTorch models (exported files carry their own)
    reference: str | None = None  # PyTorch model whose outputs are the accuracy reference


def bench_prompt(tokens: int) -> list[int]:
    """Fixed token ids below 259, valid in any vocabulary (byte-level tokenizers have 259):
    latency does not depend on which tokens, and every model gets the same ones."""
    return [3 + (37 * i) % 256 for i in range(tokens)]


def run_bench(targets: list[BenchTarget], options: BenchOptions,
              progress: Progress | None = None) -> dict:
    """The report of one interleaved run; `progress(stage, done, total)` follows the
    model loads and the timed rounds (the CLI's bars, None with --quiet)."""
    prompt = bench_prompt(options.prompt_tokens)
    report = progress or (lambda stage, done, total: None)
    workers: dict[str, Worker] = {}
    try:
        for i, target in enumerate(targets):
            workers[target.name] = Worker(_spec(target, target.name, options, prompt))
            report("load", i + 1, len(targets))
        models = [_first_facts(target, workers[target.name]) for target in targets]
        steps = measure_interleaved({n: _call(w, "step") for n, w in workers.items()},
                                    warmup=options.warmup, min_runs=options.runs,
                                    min_seconds=options.min_seconds, self_timed=True,
                                    on_round=lambda done, total: report("timed runs", done,
                                                                        total))
        llms = {n: w for n, w in workers.items() if w.llm}
        prefills = (measure_interleaved({n: _call(w, "prefill") for n, w in llms.items()},
                                        warmup=1, min_runs=options.prefill_runs,
                                        min_seconds=0.0, self_timed=True,
                                        on_round=lambda done, total: report("prefill runs",
                                                                            done, total))
                    if llms else {})
        outputs = {n: w.call("outputs") for n, w in workers.items()}
        for model in models:
            worker = workers[model["name"]]
            _add_timings(model, steps[model["name"]], prefills.get(model["name"]), worker)
            model["peak_rss_mb"] = worker.call("rss")
        _add_accuracy(models, outputs, options, prompt, targets)
    finally:
        for worker in workers.values():
            worker.stop()
    return {"title": "toolkit bench", "environment": environment(options, targets),
            "options": dataclasses.asdict(options), "models": models}


def _spec(target: BenchTarget, name: str, options: BenchOptions, prompt: list[int]) -> dict:
    return {"name": name, "path": target.path, "runtime": target.runtime,
            "threads": options.threads, "prompt": prompt, "max_context": options.max_context}


def _call(worker: Worker, command: str):
    return lambda: worker.call(command)


def _first_facts(target: BenchTarget, worker: Worker) -> dict:
    return {"name": target.name, "path": target.path, "runtime": target.runtime,
            "file_bytes": file_bytes(target.path), "sha256": file_sha256(target.path),
            "load_seconds": worker.load_seconds,
            "first_inference_ms": 1000 * worker.call("first")}


def _add_timings(model: dict, steps: list[float], prefills: list[float] | None,
                 worker: Worker) -> None:
    model["latency"] = TimingStats.from_seconds(steps).to_dict()
    model["samples_ms"] = [1000 * s for s in steps]
    model["llm"] = None
    if worker.llm and prefills:
        prefill = TimingStats.from_seconds(prefills)
        model["llm"] = {"prompt_tokens": worker.llm["prompt_tokens"], "new_tokens": 1,
                        "max_context": worker.llm["max_context"],
                        "prefill_ms": prefill.to_dict(),
                        "prefill_tokens_per_s": worker.llm["prompt_tokens"]
                        / (prefill.p50_ms / 1000),
                        "decode_tokens_per_s": 1000 / model["latency"]["p50_ms"]}


def _add_accuracy(models: list[dict], outputs: dict, options: BenchOptions,
                  prompt: list[int], targets: list[BenchTarget]) -> None:
    from export.verify import agreement

    reference, source = _reference_outputs(outputs, options, prompt, targets)
    for model in models:
        if reference is None or outputs[model["name"]].shape != reference.shape:
            model["accuracy"] = None
            continue
        check = agreement("output", outputs[model["name"]], reference)
        model["accuracy"] = {"max_abs_error": check.max_abs_error,
                             "relative_error": check.relative_error, "cosine": check.cosine,
                             "reference": source}


def _reference_outputs(outputs: dict, options: BenchOptions, prompt: list[int],
                       targets: list[BenchTarget]):
    if options.reference:
        worker = Worker({"name": "reference", "path": options.reference, "runtime": "torch",
                         "threads": options.threads, "prompt": prompt,
                         "max_context": options.max_context})
        try:
            return worker.call("outputs"), options.reference
        finally:
            worker.stop()
    torch_targets = [t for t in targets if t.runtime == "torch"]
    if torch_targets:
        return outputs[torch_targets[0].name], torch_targets[0].name
    return None, None


def file_bytes(path: str) -> int | None:
    """Bytes on disk: with ONNX's external data, every chunk of a chunked .tflite."""
    p = Path(path)
    if p.suffix == ".tflite":
        from export.litert.run_chunks import chunk_files

        files = chunk_files(p)
        if len(files) > 1:
            return sum(f.stat().st_size for f in files)
    if p.is_file():
        data = p.with_name(p.name + ".data")
        return p.stat().st_size + (data.stat().st_size if data.exists() else 0)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None  # a registered name: nothing on disk


def file_sha256(path: str) -> str | None:
    """sha256 of an exported file's bytes; None for a directory or registered name."""
    return file_fingerprint(path) if Path(path).is_file() else None


def environment(options: BenchOptions, targets: list[BenchTarget]) -> dict[str, str]:
    import torch

    env = {"cpu": _cpu_name(), "logical cpus": str(os.cpu_count()),
           "threads per model": str(options.threads), "python": platform.python_version(),
           "os": f"{platform.system()} {platform.release()}", "torch": torch.__version__,
           "numpy": np.__version__}
    if any(t.runtime == "onnxruntime" for t in targets):
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    if any(t.runtime == "litert" for t in targets):
        from importlib.metadata import version

        env["ai-edge-litert"] = version("ai-edge-litert")
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
