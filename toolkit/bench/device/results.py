"""The page's results (apps/web/lib/protocol.js) checked against the job and turned into
the host bench's report shape (toolkit.bench.session.run_bench), so `--json`, `--html`
and the table work the same. The statistics are computed here from the raw samples with
the host's own code (TimingStats), not taken from the page.

A results document:

    {"schema": "edge-toolkit-browser-bench", "version": 1, "job": JOB ID,
     "error": null | "one line",
     "device": {"user_agent", "platform", "mobile", "hardware_concurrency",
                "device_memory_gb", "cross_origin_isolated", "webgpu", "screen"},
     "models": [{"name", "runtime", "backend", "load_seconds", "first_inference_ms",
                 "samples_ms": [ms...], "prefill_samples_ms": [ms...] | null,
                 "llm": {"prompt_tokens", "max_context"} | null,
                 "output": {"shape": [...], "values": [...]}}]}
"""

from __future__ import annotations

import math

import numpy as np

from toolkit.bench.device.server import ResultsRejected
from toolkit.bench.timing import TimingStats

SCHEMA = "edge-toolkit-browser-bench"
MAX_SAMPLES = 100_000
MAX_OUTPUT_VALUES = 2_000_000
BACKENDS = ("wasm", "webgpu", "litert-js", "litert-js-webgpu")


def check_results(document: dict, job) -> dict:
    """`document` if it is a complete, well-formed answer to `job`; ResultsRejected (one
    line naming the field) otherwise. A document with an "error" is well-formed too."""
    _require(document.get("schema") == SCHEMA and document.get("version") == 1,
             f"schema must be {SCHEMA} version 1")
    _require(document.get("job") == job.id, "the results answer another job (reload the page)")
    if document.get("error") is not None:
        _require(isinstance(document["error"], str), "error must be a string")
        return document
    device = document.get("device")
    _require(isinstance(device, dict), "device must be an object")
    models = document.get("models")
    _require(isinstance(models, list), "models must be a list")
    names = [m.name for m in job.models]
    _require([m.get("name") if isinstance(m, dict) else None for m in models] == names,
             f"models must be {names}, in that order")
    for model, served in zip(models, job.models, strict=True):
        _check_model(model, served)
    return document


def _check_model(model: dict, served) -> None:
    name = served.name
    _require(model.get("backend") in BACKENDS, f"{name}: backend must be one of {BACKENDS}")
    for key in ("load_seconds", "first_inference_ms"):
        _require(_finite(model.get(key)) and model[key] >= 0, f"{name}: {key} must be >= 0")
    _check_samples(model.get("samples_ms"), f"{name}: samples_ms")
    is_llm = served.manifest.get("kind", "llm") == "llm"
    if is_llm:
        _check_samples(model.get("prefill_samples_ms"), f"{name}: prefill_samples_ms")
        llm = model.get("llm")
        _require(isinstance(llm, dict) and isinstance(llm.get("prompt_tokens"), int)
                 and isinstance(llm.get("max_context"), int), f"{name}: llm must give "
                 "prompt_tokens and max_context")
    output = model.get("output")
    _require(isinstance(output, dict) and isinstance(output.get("shape"), list)
             and all(isinstance(d, int) and d >= 0 for d in output["shape"])
             and isinstance(output.get("values"), list)
             and len(output["values"]) <= MAX_OUTPUT_VALUES
             and len(output["values"]) == math.prod(output["shape"])
             and all(isinstance(v, int | float) for v in output["values"]),
             f"{name}: output must be {{shape, values}} with prod(shape) numbers")


def _check_samples(samples, what: str) -> None:
    _require(isinstance(samples, list) and 0 < len(samples) <= MAX_SAMPLES
             and all(_finite(s) and s >= 0 for s in samples),
             f"{what} must be a non-empty list of times in ms")


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ResultsRejected(message)


def report_models(document: dict, job, host_outputs: dict[str, np.ndarray | None]) -> list[dict]:
    """The report's "models" entries (toolkit.bench.session's shape); accuracy is the
    browser's output against the host runtime's on the same file and inputs."""
    from toolkit.bench.session import file_bytes, file_sha256

    entries = []
    for model, served in zip(document["models"], job.models, strict=True):
        steps = [ms / 1000 for ms in model["samples_ms"]]
        entry = {"name": served.name, "path": str(served.model_path),
                 "runtime": f"browser ({model['backend']})",
                 "file_bytes": sum(p.stat().st_size for n, p in served.files.items()
                                   if n in served.manifest["model"]["files"])
                 or file_bytes(str(served.model_path)),
                 "sha256": file_sha256(str(served.model_path)),
                 "load_seconds": model["load_seconds"],
                 "first_inference_ms": model["first_inference_ms"],
                 "latency": TimingStats.from_seconds(steps).to_dict(),
                 "samples_ms": list(model["samples_ms"]), "llm": None, "peak_rss_mb": None,
                 "accuracy": None}
        if model.get("llm") and model.get("prefill_samples_ms"):
            prefill = TimingStats.from_seconds([ms / 1000 for ms in model["prefill_samples_ms"]])
            prompt = model["llm"]["prompt_tokens"]
            entry["llm"] = {"prompt_tokens": prompt, "new_tokens": 1,
                            "max_context": model["llm"]["max_context"],
                            "prefill_ms": prefill.to_dict(),
                            "prefill_tokens_per_s": prompt / (prefill.p50_ms / 1000),
                            "decode_tokens_per_s": 1000 / entry["latency"]["p50_ms"]}
        entry["accuracy"] = _accuracy(model["output"], host_outputs.get(served.name),
                                      served.runtime)
        entries.append(entry)
    return entries


def _accuracy(output: dict, host: np.ndarray | None, runtime: str) -> dict | None:
    """The browser's output against the host runtime's; an LLM's host output is the
    prompt's logits [.., T, V], of which the browser sends the last row."""
    from export.verify import agreement

    if host is None:
        return None
    browser = np.asarray(output["values"], dtype=np.float32).reshape(output["shape"])
    host = np.asarray(host, dtype=np.float32)
    if host.ndim >= 2 and browser.shape == (1, host.shape[-1]) and host.size != browser.size:
        host = host.reshape(-1, host.shape[-1])[-1:]
    if host.size != browser.size:
        return None
    check = agreement("output", browser.reshape(host.shape), host)
    return {"max_abs_error": check.max_abs_error, "relative_error": check.relative_error,
            "cosine": check.cosine, "reference": f"the same file in {runtime} (Python)"}
