"""Where the 4-bit ONNX decode step of SmolLM2-135M spends its time, and how far its int4
kernel is from the memory it reads: the evidence behind the llm-decode table's
"% of bound" for the int8-compute file.

    python -m benchmarks.decode_profile [--work DIR] [--threads 1 2] [--rounds 60]

The file is the llm-decode table's "gptq4, fused, auto level, 4-bit table.onnx": the GPTQ
4-bit g64 artifact exported with a 4-bit table and head at the default `auto` accuracy
level (written into --work unless already there; its level is read back from the file).

1. Cold and warm steps against the bandwidth probe, in one process per setting so the
   ratios do not depend on the shared machine's drift. Each round sweeps a 1 GiB float32
   buffer with `torch.sum` (timed: the DRAM read bandwidth, as
   benchmarks/memory_bandwidth.py measures it), then times one decode step at position 64
   (cold: the sweep has just pushed the file's 82 MB out of the host's shared last-level
   cache, as the interleaved `toolkit bench` does when other models run between steps),
   then the same step again (warm: the weights are now in that cache). % of bound =
   (bytes read per token / probe bandwidth) / cold step time, the llm-decode column.
   Each setting runs twice: with the C library's default 4 KiB pages, and with
   `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, which makes glibc's malloc ask for transparent
   huge pages (2 MiB), so streaming 82 MB of weights walks ~40 page-table entries instead
   of ~20 000. The probe's buffer comes from the same malloc, so both sides of the ratio
   get the same pages: the test is whether the kernel loses time to TLB misses that the
   probe does not.
2. An onnxruntime profile of warm steps (4 KiB pages): the share of kernel time per
   operator type, and per MatMulNBits shape (layer type) its bytes and the rate it reads
   them at (initializer bytes / kernel time). Profiling adds a little per-operator cost,
   so the shares, not the absolute times, are the point.

Results: benchmarks/results/decode_profile.json and the `decode-profile` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.markdown_section import run_or_render  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "decode_profile.json"
SECTION = "decode-profile"
FILE_NAME = "gptq4, fused, auto level, 4-bit table.onnx"
HUGE_PAGES = "glibc.malloc.hugetlb=1"
PAGES = {"4 KiB (default)": "", "transparent huge pages": HUGE_PAGES}
PROMPT = 64
PROBE_BYTES = 1 << 30


def build(work: Path) -> Path:
    """The llm-decode table's int8-compute file, exported like benchmarks/llm_decode.py does."""
    from benchmarks.llm_decode import ARTIFACT_FLAGS, MODEL, toolkit

    artifact, out = work / "gptq4", work / "gptq4-auto-t4.onnx"
    if not artifact.exists():
        toolkit("compress", "--model", MODEL, *ARTIFACT_FLAGS, "--out", str(artifact),
                "--no-eval", "--quiet")
    if not out.exists():
        toolkit("export", "onnx", "--model", str(artifact), "--out", str(out),
                "--max-context", "512", "--embedding-bits", "4", "--overwrite", "--quiet")
    return out


def open_step(path: Path, threads: int, profile_prefix: str | None = None):
    """The file's session (as `toolkit bench` opens it) after a 64-token prefill, and a
    function running one decode step at position 64."""
    import numpy as np
    import onnxruntime as ort

    from export.onnx.llm_session import OnnxDecoderSession

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    session = OnnxDecoderSession(ort.InferenceSession(os.fspath(path), options,
                                                      providers=["CPUExecutionProvider"]), path)
    keys = np.zeros(session.cache_shape, session.cache_dtype)
    values = np.zeros_like(keys)
    logits, keys, values = session(np.arange(1, PROMPT + 1)[None], np.array([0]), keys, values)
    token = np.array([[int(logits[0, -1].argmax())]])
    position = np.array([PROMPT])
    return session, lambda: session(token, position, keys, values)


def child_ratio(path: Path, threads: int, rounds: int) -> dict:
    """Part 1 in this process: per round, probe, cold step, warm step (module docstring)."""
    import time

    import torch

    torch.set_num_threads(threads)
    _, step = open_step(path, threads)
    buffer = torch.empty(PROBE_BYTES // 4, dtype=torch.float32)
    buffer.fill_(1.0)
    probe, cold, warm = [], [], []
    for index in range(rounds + 3):
        start = time.perf_counter()
        buffer.sum()
        middle = time.perf_counter()
        step()
        end = time.perf_counter()
        step()
        if index >= 3:  # warm-up rounds
            probe.append(middle - start)
            cold.append(end - middle)
            warm.append(time.perf_counter() - end)
    return {"probe_gb_per_s": [PROBE_BYTES / s / 1e9 for s in probe],
            "cold_ms": [s * 1e3 for s in cold], "warm_ms": [s * 1e3 for s in warm],
            "anon_huge_kb": _anon_huge_kb()}


def _anon_huge_kb() -> int | None:
    """This process's memory on transparent huge pages (kB), the proof the setting took."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return None
    match = re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def child_profile(path: Path, threads: int, rounds: int, folder: Path) -> dict:
    """Part 2 in this process: onnxruntime's per-node kernel times over `rounds` warm steps."""
    import onnx

    session, step = open_step(path, threads, str(folder / "profile"))
    for _ in range(rounds):
        step()
    events = json.loads(Path(session.session.end_profiling()).read_text())
    model = onnx.load(os.fspath(path), load_external_data=False)
    sizes = {t.name: len(t.raw_data) or t.ByteSize() for t in model.graph.initializer}
    node_bytes = {n.name: (n.op_type, sum(sizes.get(i, 0) for i in n.input))
                  for n in model.graph.node}
    by_op: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    prefill_end = runs[0][1]  # the first run is the 64-token prefill: not a decode step
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") \
                and event["ts"] >= prefill_end:
            name = event["name"][: -len("_kernel_time")]
            by_node[name] += event["dur"]
            calls[name] += 1
            by_op[event["args"]["op_name"]] += event["dur"]
    steps = len(runs) - 1
    shapes: dict[str, dict] = {}
    for name, micros in by_node.items():
        op_type, nbytes = node_bytes.get(name, ("?", 0))
        if op_type != "MatMulNBits":
            continue
        layer_type = re.sub(r"\.\d+\.", ".N.", name.rsplit("/", 1)[-1])
        entry = shapes.setdefault(layer_type, {"count": 0, "us_per_step": 0.0, "bytes": 0})
        entry["count"] += 1
        entry["us_per_step"] += micros / steps
        entry["bytes"] += nbytes
    return {"steps": steps, "op_us_per_step": {k: v / steps for k, v in by_op.items()},
            "matmulnbits": shapes}


def run_child(kind: str, path: Path, threads: int, rounds: int, tunables: str,
              folder: Path) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables  # read by glibc at process start: hence a child
    child = subprocess.run([sys.executable, "-m", "benchmarks.decode_profile", "--child",
                            kind, "--file", str(path), "--threads", str(threads),
                            "--rounds", str(rounds), "--work", str(folder)],
                           cwd=REPO, env=env, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"decode_profile child {kind} failed: {child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    from benchmarks.llm_decode import onnx_bytes_per_token

    work = args.work or Path(tempfile.mkdtemp(prefix="decode-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    path = build(work)
    per_token = onnx_bytes_per_token(path)
    ratios = {}
    for threads in args.threads:
        for label, tunables in PAGES.items():
            ratios[f"{threads}|{label}"] = run_child("ratio", path, threads, args.rounds,
                                                    tunables, work)
    profile = run_child("profile", path, 1, args.rounds, "", work)
    return {"environment": environment(), "file": FILE_NAME, "bytes_per_token": per_token,
            "rounds": args.rounds, "ratios": ratios, "profile": profile,
            "load_average_1min_end": os.getloadavg()[0]}


def _median_spread(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[len(ordered) // 10], \
        ordered[(len(ordered) * 9) // 10]


def markdown(data: dict) -> str:
    env = data["environment"]
    total = data["bytes_per_token"]["total"]
    levels = data["bytes_per_token"]["accuracy_levels"]
    lines = [
        "## Why the 4-bit decode step is not nearer the bandwidth bound: a profile", "",
        f"`python -m benchmarks.decode_profile` on {env['cpu']} ({env['cores']} cores), "
        f"{env['date']}. The llm-decode table's `{data['file']}` (MatMulNBits accuracy level "
        f"{', '.join(map(str, levels))}; {total / 1e6:.1f} MB read per decode token). "
        f"{data['rounds']} rounds per setting, each in its own process: a 1 GiB `torch.sum` "
        "probe (DRAM read bandwidth), one decode step at position 64 right after it (cold: "
        "the probe has evicted the file from the host's shared last-level cache, as other "
        "models' steps do in the interleaved llm-decode bench), then the same step again "
        "(warm). Medians with the 10th-90th percentile. % of bound = (MB per token / probe "
        "bandwidth) / cold step. Huge pages: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` for "
        "that process (its probe buffer too); `huge MB` is the process's memory on "
        "transparent huge pages at the end, the proof the setting took. 1-minute load "
        f"average when the run ended: {data['load_average_1min_end']:.2f} (on 2 cores, "
        "above about 1 another job shared the machine and the 2-thread rows are "
        "disturbed most).", "",
        "| threads | pages | probe GB/s | cold step ms | % of bound (cold) | warm step ms "
        "| warm MB/ms | huge MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, row in data["ratios"].items():
        threads, label = key.split("|")
        bw, bw_lo, bw_hi = _median_spread(row["probe_gb_per_s"])
        cold, cold_lo, cold_hi = _median_spread(row["cold_ms"])
        warm, warm_lo, warm_hi = _median_spread(row["warm_ms"])
        bound_ms = total / (bw * 1e9) * 1e3
        huge = row.get("anon_huge_kb")
        lines.append(
            f"| {threads} | {label} | {bw:.1f} ({bw_lo:.1f}-{bw_hi:.1f}) | {cold:.2f} "
            f"({cold_lo:.2f}-{cold_hi:.2f}) | {100 * bound_ms / cold:.0f}% | {warm:.2f} "
            f"({warm_lo:.2f}-{warm_hi:.2f}) | {total / 1e6 / warm:.1f} | "
            f"{'-' if huge is None else f'{huge / 1024:.0f}'} |")
    profile = data["profile"]
    ops = profile["op_us_per_step"]
    kernel = sum(ops.values())
    lines += [
        "", f"onnxruntime profile, 1 thread, 4 KiB pages, {profile['steps']} warm decode steps "
        f"(the prefill left out): {kernel / 1e3:.2f} ms of kernel time per step.", "",
        "| operator | us per step | share |", "|---|---|---|"]
    for op_type, micros in sorted(ops.items(), key=lambda kv: -kv[1])[:8]:
        lines.append(f"| {op_type} | {micros:.0f} | {100 * micros / kernel:.1f}% |")
    lines += ["", "| MatMulNBits layer type | nodes | MB | us per step | MB/ms read |",
              "|---|---|---|---|---|"]
    for layer_type, entry in sorted(profile["matmulnbits"].items(),
                                    key=lambda kv: -kv[1]["us_per_step"]):
        mb = entry["bytes"] / 1e6
        lines.append(f"| {layer_type} | {entry['count']} | {mb:.2f} | "
                     f"{entry['us_per_step']:.0f} | {mb / (entry['us_per_step'] / 1e3):.1f} |")
    lines += ["", "The kernel alone, per layer shape, with its weights in cache and streamed "
              "from DRAM: the `matmul-nbits-rate` section (benchmarks/matmul_nbits_rate.py)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the artifact and the file")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--child", choices=["ratio", "profile"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--render-only", action="store_true",
                        help="re-render BENCHMARKS.md from the results file")
    args = parser.parse_args(argv)
    if args.child == "ratio":
        print(json.dumps(child_ratio(args.file, args.threads[0], args.rounds)))
        return 0
    if args.child == "profile":
        print(json.dumps(child_profile(args.file, args.threads[0], args.rounds, args.work)))
        return 0
    print(run_or_render(args.render_only, RESULTS, REPO / "BENCHMARKS.md", SECTION,
                        lambda: run(args), markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
