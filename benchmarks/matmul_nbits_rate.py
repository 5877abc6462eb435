"""How fast onnxruntime's int4 kernel (com.microsoft MatMulNBits) reads its weights on this
CPU, per layer shape of the SmolLM2-135M 4-bit file, with the weights in cache and in
DRAM: the ceiling under the llm-decode table's "% of bound" for that file.

    python -m benchmarks.matmul_nbits_rate [--work DIR] [--threads 1 2] [--levels 4 0]

A decode step is one matrix-vector product per linear, so a kernel that overlapped its
arithmetic with its memory reads perfectly would stream weights at the DRAM read
bandwidth B (benchmarks/memory_bandwidth.py). One that does not pays for both:

    t = bytes / B + bytes / C     =>   rate = 1 / (1/B + 1/C)                        (1)

with C the kernel's own rate when the weights are already in cache (its arithmetic
throughput: unpacking 4-bit codes, scaling, the dot products). (1) is the serial
("no overlap") model; the measured DRAM rate between (1) and B says how much overlap the
kernel gets.

For each MatMulNBits layer type of the file (the llm-decode table's `gptq4, fused, auto
level, 4-bit table.onnx`, written into --work as benchmarks/decode_profile.py does; its
N, K, bits, block size and zero points are read from the file) a synthetic graph holds
copies of that one node with random codes, every copy reading the same input row:

- cache: copies of at most 4 MB in all (one at least), run again and again, so after
  the first run the weights come from the caches: C.
- DRAM: copies of at least 512 MB in all, more than the host's shared last-level cache
  holds, so every run streams them from memory.

One more row: the head at 8 bits, as `--embedding-bits 8` writes it, to show what each
accuracy level costs an 8-bit weight (export.onnx.accuracy_choice keeps int8 compute on
8-bit weights where it can, for this reason).

Each node's kernel time comes from onnxruntime's profiler (framework overhead and the
Python call left out); the rate is the node's initializer bytes (codes, scales, zero
points) over its median kernel time. B is the 1 GiB `torch.sum` probe in the same process
with the same thread count, before and after (the lower is used, as llm-decode does).

Results: benchmarks/results/matmul_nbits_rate.json and the `matmul-nbits-rate` section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.markdown_section import run_or_render  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "matmul_nbits_rate.json"
SECTION = "matmul-nbits-rate"
CACHE_BYTES = 4 << 20
DRAM_BYTES = 512 << 20
PROBE_BYTES = 1 << 30
HEAD = "lm_head"
EIGHT_BIT_HEAD = "lm_head at 8 bits (the 8-bit table file's head)"


def file_shapes(path: Path) -> dict[str, dict]:
    """Per MatMulNBits layer type of the file (block index replaced by N): its attributes,
    whether it has zero points, and how many nodes of it one decode step runs."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    shapes: dict[str, dict] = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        layer_type = re.sub(r"\.\d+\.", ".N.", node.name).removesuffix(".MatMulNBits")
        entry = shapes.setdefault(layer_type, {
            "N": int(attrs["N"]), "K": int(attrs["K"]), "bits": int(attrs["bits"]),
            "block_size": int(attrs["block_size"]),
            "zero_points": len(node.input) > 3 and bool(node.input[3]), "nodes": 0})
        entry["nodes"] += 1
    return shapes


def eight_bit_head(shapes: dict[str, dict]) -> dict[str, dict]:
    """The head as `--embedding-bits 8` writes it (the llm-decode table's 8-bit table
    file: the same groups and zero points, 8-bit codes), with no nodes in this file's step:
    a row of the table, left out of the step's sum."""
    head = shapes.get(HEAD)
    if head is None or head["bits"] == 8:
        return {}
    return {EIGHT_BIT_HEAD: {**head, "bits": 8, "nodes": 0}}


def node_bytes(shape: dict) -> int:
    """Initializer bytes of one node: packed codes, float32 scales, packed zero points."""
    n, k, bits, block = shape["N"], shape["K"], shape["bits"], shape["block_size"]
    blocks = math.ceil(k / block)
    total = n * blocks * block * bits // 8 + n * blocks * 4
    if shape["zero_points"]:
        total += n * math.ceil(blocks * bits / 8)
    return total


def synthetic_model(shape: dict, copies: int, level: int, seed: int = 0) -> bytes:
    """`copies` MatMulNBits nodes of `shape`, random codes and scales, all reading `x`."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    n, k, bits, block = shape["N"], shape["K"], shape["bits"], shape["block_size"]
    blocks = math.ceil(k / block)
    rng = np.random.default_rng(seed)
    nodes, inits, outputs = [], [], []
    for i in range(copies):
        codes = rng.integers(0, 256, size=(n, blocks, block * bits // 8), dtype=np.uint8)
        scales = (rng.random(n * blocks, dtype=np.float32) + 0.5) * 1e-2
        inits += [numpy_helper.from_array(codes, f"B{i}"),
                  numpy_helper.from_array(scales, f"S{i}")]
        inputs = ["x", f"B{i}", f"S{i}"]
        if shape["zero_points"]:
            zeros = rng.integers(0, 256, size=n * math.ceil(blocks * bits / 8), dtype=np.uint8)
            inits.append(numpy_helper.from_array(zeros, f"Z{i}"))
            inputs.append(f"Z{i}")
        nodes.append(helper.make_node("MatMulNBits", inputs, [f"y{i}"], name=f"node{i}",
                                      domain="com.microsoft", K=k, N=n, bits=bits,
                                      block_size=block, accuracy_level=level))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "rate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def kernel_us(model: bytes, k: int, threads: int, runs: int, folder: Path) -> list[float]:
    """Median kernel time (us) per node over `runs` profiled runs (after 2 unprofiled)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "rate")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = {"x": np.random.default_rng(1).standard_normal((1, 1, k)).astype(np.float32)}
    for _ in range(runs):
        session.run(None, x)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"]].append(event["dur"])
    # the first two runs of each node (prepacked buffers faulting in) are left out
    return [statistics.median(durations[2:]) for durations in per_node.values()]


def timed_copies(shape: dict, copies: int, level: int, threads: int, runs: int,
                 folder: Path) -> dict:
    """`copies` nodes of `shape` run `runs` times: the median of the nodes' median kernel
    times (us), their 10th and 90th percentile, and the wall time it all took."""
    started = time.perf_counter()
    times = sorted(kernel_us(synthetic_model(shape, copies, level), shape["K"], threads, runs,
                             folder))
    return {"copies": copies, "runs": runs, "us": statistics.median(times),
            "us_p10": times[len(times) // 10], "us_p90": times[(len(times) * 9) // 10],
            "wall_s": time.perf_counter() - started}


def between_probes(threads: int, measure_rows: Callable[[], list[dict]]) -> dict:
    """`measure_rows()` at `threads` intra-op threads, with the 1 GiB bandwidth probe in the
    same process and thread count before and after it."""
    import torch

    from benchmarks.memory_bandwidth import read_bandwidth

    torch.set_num_threads(threads)
    before = read_bandwidth(threads, PROBE_BYTES)
    rows = measure_rows()
    return {"threads": threads, "bandwidth_before": before,
            "bandwidth_after": read_bandwidth(threads, PROBE_BYTES), "rows": rows}


def built_file_shapes(work: Path | None, prefix: str) -> tuple[Path, dict[str, dict]]:
    """(work folder, layer shapes) of the decode-profile file, written into `work` (a new
    temporary folder when None) unless it is there already."""
    from benchmarks.decode_profile import build

    work = work or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work, file_shapes(build(work))


def measure(shapes: dict[str, dict], threads: int, levels: list[int], folder: Path) -> dict:
    def rows() -> list[dict]:
        measured = []
        for layer_type, shape in shapes.items():
            nbytes = node_bytes(shape)
            for level in levels:
                row = {"layer_type": layer_type, "level": level, "bytes": nbytes}
                for residency, total in (("cache", CACHE_BYTES), ("dram", DRAM_BYTES)):
                    copies = max(1, total // nbytes) if residency == "cache" \
                        else math.ceil(total / nbytes)
                    runs = 12 if residency == "dram" else max(12, 400 // copies)
                    row[residency] = timed_copies(shape, copies, level, threads, runs, folder)
                measured.append(row)
                print(json.dumps(row), flush=True)
        return measured
    return between_probes(threads, rows)


def run(args) -> dict:
    from benchmarks.decode_profile import FILE_NAME

    work, shapes = built_file_shapes(args.work, "matmul-nbits-rate-")
    shapes.update(eight_bit_head(shapes))
    return {"environment": environment(), "file": FILE_NAME, "shapes": shapes,
            "runs": [measure(shapes, threads, args.levels, work) for threads in args.threads],
            "load_average_1min_end": os.getloadavg()[0]}


def serial_rate(bandwidth: float, cache_rate: float) -> float:
    """Equation (1): the rate of a kernel that reads, then computes, never both at once."""
    return 1.0 / (1.0 / bandwidth + 1.0 / cache_rate)


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [
        "## The int4 kernel's own rate: MatMulNBits per layer shape, in cache and from DRAM",
        "", f"`python -m benchmarks.matmul_nbits_rate` on {env['cpu']} ({env['cores']} "
        f"cores), {env['date']}. Each layer type of the llm-decode table's `{data['file']}` "
        "(its N, K, bits, block and zero points), and that head at 8 bits as `--embedding-bits "
        "8` writes it (not in this file: left out of the sums below), as copies of one "
        "MatMulNBits node with "
        "random codes: at most 4 MB of them, run again and again (cache: the kernel's "
        "arithmetic rate C), or at least 512 MB (DRAM: every run streams them from memory). "
        "Rate = the node's bytes (codes, scales, zero points) / its median kernel time in "
        "onnxruntime's profiler (10th-90th percentile of the nodes' medians in brackets). B: "
        "the 1 GiB `torch.sum` probe in the same process and thread count, the lower of "
        "before and after. Serial model: 1 / (1/B + 1/C), the rate of a kernel that never "
        "overlaps its reads with its arithmetic. 1-minute load average at the end: "
        f"{data['load_average_1min_end']:.2f}.", ""]
    for run in data["runs"]:
        bandwidth = min(run["bandwidth_before"]["gb_per_s"], run["bandwidth_after"]["gb_per_s"])
        lines += [f"**{run['threads']} thread(s)**: B = {bandwidth:.1f} GB/s "
                  f"(before {run['bandwidth_before']['gb_per_s']:.1f}, after "
                  f"{run['bandwidth_after']['gb_per_s']:.1f}).", "",
                  "| layer type | N x K | block | zero points | level | KB | cache us | "
                  "C MB/ms | DRAM us | DRAM MB/ms | DRAM % of B | serial model % of B |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        weighted: dict[int, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        for row in run["rows"]:
            shape = data["shapes"][row["layer_type"]]
            cache, dram, kb = row["cache"], row["dram"], row["bytes"] / 1e3
            cache_rate, dram_rate = kb / cache["us"], kb / dram["us"]  # KB/us = MB/ms
            lines.append(
                f"| {row['layer_type']} | {shape['N']} x {shape['K']} | "
                f"{shape['block_size']} | {'yes' if shape['zero_points'] else 'no'} | "
                f"{row['level']} | {kb:.0f} | {cache['us']:.1f} ({cache['us_p10']:.1f}-"
                f"{cache['us_p90']:.1f}) | {cache_rate:.1f} | {dram['us']:.1f} "
                f"({dram['us_p10']:.1f}-{dram['us_p90']:.1f}) | {dram_rate:.1f} | "
                f"{100 * dram_rate / bandwidth:.0f}% | "
                f"{100 * serial_rate(bandwidth, cache_rate) / bandwidth:.0f}% |")
            total = weighted[row["level"]]
            total[0] += row["bytes"] * shape["nodes"]
            total[1] += dram["us"] * shape["nodes"]
        lines.append("")
        for level, (nbytes, micros) in sorted(weighted.items()):
            rate = nbytes / 1e3 / micros
            lines.append(
                f"- Level {level}, weighted by the file's nodes (one decode step's "
                f"MatMulNBits: {nbytes / 1e6:.1f} MB): {micros / 1e3:.2f} ms from DRAM, "
                f"{rate:.1f} MB/ms, **{100 * rate / bandwidth:.0f}% of B** for the matmuls "
                "alone; a step's other operators only add time.")
        nbytes, micros = max(weighted.values(), key=lambda total: total[0] / total[1])
        allowed = 1.5 * nbytes / (bandwidth * 1e9) * 1e3
        lines.append(
            f"- Within 1.5x of the bound, judged on the matmuls' own bytes: at most 1.5 x "
            f"{nbytes / 1e6:.1f} MB / B = {allowed:.2f} ms; the faster level takes "
            f"{micros / 1e3:.2f} ms ({'inside' if micros / 1e3 <= allowed else 'over'} that). "
            "A whole step adds a few MB of cache rows to the bound and the time of its other "
            "operators (GroupQueryAttention, norms: the decode-profile section).")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the artifact and the file")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 0],
                        help="MatMulNBits accuracy levels to measure (4: int8 compute, "
                             "0: float)")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render BENCHMARKS.md from the results file")
    args = parser.parse_args(argv)
    print(run_or_render(args.render_only, RESULTS, REPO / "BENCHMARKS.md", SECTION,
                        lambda: run(args), markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
