"""Does any MatMulNBits weight layout bring the SmolLM2-135M 4-bit decode step within 1.5x
of the memory-bandwidth bound? onnxruntime's int4 kernel (accuracy level 4, int8 compute)
timed from DRAM for every block size it takes and with and without zero points, per layer
shape of the llm-decode table's 4-bit file.

    python -m benchmarks.matmul_nbits_layouts [--work DIR] [--threads 1 2]
        [--blocks 16 32 64 128 256]

The file's layout is the artifact's: its quantization groups become MatMulNBits blocks and
its asymmetric codes carry zero points. A user can choose another group size when
compressing (`--group-size`), so the question is whether some other layout reads its
weights fast enough. The decode goal is

    step time  <=  1.5 x bytes per token / B                                         (1)

with B the DRAM read bandwidth (the 1 GiB `torch.sum` probe, benchmarks/memory_bandwidth.py).
A decode step is the MatMulNBits products plus the other operators (attention, norms:
about 2 ms at 1 thread, the decode-profile section), so the products alone must run at

    rate  >=  B / 1.5  (67% of B)                                                    (2)

and faster still to leave time for the rest. Each layout's products are timed the way
benchmarks/matmul_nbits_rate.py times them from DRAM (copies of one node with random codes,
at least 512 MB in all, so every run streams them from memory; the node's median kernel
time in onnxruntime's profiler). The step's products are summed over the file's nodes
(30 of each block linear, one head); bytes are each layout's own (a larger block stores
fewer scales, a block that does not divide K pads the last one), so (2) is judged per
layout on its own bytes. The head (blocks of 32 in the file) takes each layout too.
The verdict names the fastest layout per byte, and the fastest among the blocks that
divide every layer's input width, the only group sizes the quantizers accept for the
model (SmolLM2's 576-wide layers: 16, 32, 64; larger blocks are measured for the kernel's
sake: MatMulNBits pads the last block).

Results: benchmarks/results/matmul_nbits_layouts.json and the `matmul-nbits-layouts`
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.markdown_section import run_or_render  # noqa: E402
from benchmarks.matmul_nbits_rate import (  # noqa: E402
    DRAM_BYTES,
    between_probes,
    built_file_shapes,
    node_bytes,
    timed_copies,
)

RESULTS = REPO / "benchmarks" / "results" / "matmul_nbits_layouts.json"
SECTION = "matmul-nbits-layouts"
LEVEL = 4  # int8 compute: the faster level on every 4-bit shape (matmul-nbits-rate)
BLOCKS = [16, 32, 64, 128, 256]  # the block sizes MatMulNBits takes (powers of 2, >= 16)
GOAL = 1.5  # decode within 1.5x of the bound
RUNS = 12


def layouts(blocks: list[int]) -> list[dict]:
    return [{"block_size": block, "zero_points": zero_points}
            for block in blocks for zero_points in (True, False)]


def with_layout(shape: dict, layout: dict) -> dict:
    return {**shape, **layout}


def dram_us(shape: dict, threads: int, folder: Path) -> dict:
    """One node of `shape` streamed from DRAM (matmul_nbits_rate.timed_copies)."""
    return timed_copies(shape, math.ceil(DRAM_BYTES / node_bytes(shape)), LEVEL, threads, RUNS,
                        folder)


def measure(shapes: dict[str, dict], threads: int, blocks: list[int], folder: Path) -> dict:
    def rows() -> list[dict]:
        measured = []
        for layout in layouts(blocks):
            for layer_type, shape in shapes.items():
                laid = with_layout(shape, layout)
                row = {"layout": layout, "layer_type": layer_type, "bytes": node_bytes(laid),
                       "dram": dram_us(laid, threads, folder)}
                measured.append(row)
                print(f"{threads} thread(s) {layout} {layer_type}: {row['bytes'] / 1e3:.0f} "
                      f"KB in {row['dram']['us']:.1f} us", flush=True)
        return measured
    return between_probes(threads, rows)


def run(args) -> dict:
    from benchmarks.decode_profile import FILE_NAME

    work, shapes = built_file_shapes(args.work, "matmul-nbits-layouts-")
    return {"environment": environment(), "file": FILE_NAME, "level": LEVEL, "shapes": shapes,
            "runs": [measure(shapes, threads, args.blocks, work) for threads in args.threads],
            "load_average_1min_end": os.getloadavg()[0]}


def step_totals(run: dict, shapes: dict[str, dict]) -> list[dict]:
    """Per layout: one decode step's products (bytes, us) summed over the file's nodes."""
    totals: dict[tuple, dict] = {}
    for row in run["rows"]:
        key = (row["layout"]["block_size"], row["layout"]["zero_points"])
        total = totals.setdefault(key, {"layout": row["layout"], "bytes": 0, "us": 0.0,
                                        "rates": {}})
        nodes = shapes[row["layer_type"]]["nodes"]
        total["bytes"] += row["bytes"] * nodes
        total["us"] += row["dram"]["us"] * nodes
        total["rates"][row["layer_type"]] = row["bytes"] / 1e3 / row["dram"]["us"]  # MB/ms
    return list(totals.values())


def allowed_ms(nbytes: float, bandwidth: float) -> float:
    """1.5x the bound on `nbytes`: the most time (ms) their products may take, B in GB/s."""
    return GOAL * nbytes / (bandwidth * 1e9) * 1e3


def _layout_name(layout: dict) -> str:
    return f"{layout['block_size']}, {'zero points' if layout['zero_points'] else 'symmetric'}"


def _verdict(label: str, totals: list[dict], bandwidth: float) -> list[str]:
    """The fastest of `totals` per byte against the goal: its share of B and the time 1.5x
    the bound on its own bytes leaves for the rest of the step."""
    best = max(totals, key=lambda total: total["bytes"] / total["us"])
    share = best["bytes"] / 1e3 / best["us"] / bandwidth
    allowed = allowed_ms(best["bytes"], bandwidth)
    left = allowed - best["us"] / 1e3
    return [f"- {label}: {_layout_name(best['layout'])}, {100 * share:.0f}% of B for the "
            f"products alone ({'meets' if share >= 1 / GOAL else 'misses'} the 67% they need "
            f"before any other operator's time): they take {best['us'] / 1e3:.2f} ms where "
            f"1.5x the bound on their bytes allows {allowed:.2f} ms, "
            + (f"leaving {left:.2f} ms for every other operator of the step." if left >= 0
               else f"{-left:.2f} ms over before any other operator.")]


def markdown(data: dict) -> str:
    env, shapes = data["environment"], data["shapes"]
    types = list(shapes)
    lines = [
        "## Every MatMulNBits layout against the bandwidth goal",
        "", f"`python -m benchmarks.matmul_nbits_layouts` on {env['cpu']} ({env['cores']} "
        f"cores), {env['date']}. The layer shapes of the llm-decode table's `{data['file']}` "
        f"at accuracy level {data['level']} (int8 compute), each in every block size "
        "MatMulNBits takes, with zero points (the artifact's asymmetric codes) and without "
        "(symmetric), timed from DRAM as the matmul-nbits-rate section does (copies of one "
        "node, at least 512 MB, median kernel time in onnxruntime's profiler). Rates: the "
        "node's own bytes (codes, float32 scales, zero points; a block that does not divide "
        "K pads the last one) / its time; the head too takes each layout. Step: the "
        "file's nodes summed (30 of each block linear, one head), in each layout's own "
        "bytes. Goal: a step within 1.5x of the bound needs its products at 67% of B or more "
        "(B: the 1 GiB `torch.sum` probe, the lower of before and after), before the other "
        "operators' time (about 2 ms at 1 thread: the decode-profile section). 1-minute load "
        f"average at the end: {data['load_average_1min_end']:.2f}.", ""]
    for run in data["runs"]:
        bandwidth = min(run["bandwidth_before"]["gb_per_s"], run["bandwidth_after"]["gb_per_s"])
        header = " | ".join(f"{t} MB/ms" for t in types)
        lines += [f"**{run['threads']} thread(s)**: B = {bandwidth:.1f} GB/s (before "
                  f"{run['bandwidth_before']['gb_per_s']:.1f}, after "
                  f"{run['bandwidth_after']['gb_per_s']:.1f}).", "",
                  f"| block, zero points | {header} | step MB | step ms | step % of B | "
                  "1.5x bound ms |",
                  "|---|" + "---|" * len(types) + "---|---|---|---|"]
        totals = step_totals(run, shapes)
        for total in totals:
            rate = total["bytes"] / 1e3 / total["us"]
            allowed = allowed_ms(total["bytes"], bandwidth)
            cells = " | ".join(f"{total['rates'][t]:.1f}" for t in types)
            lines.append(f"| {_layout_name(total['layout'])} | {cells} | "
                         f"{total['bytes'] / 1e6:.1f} | {total['us'] / 1e3:.2f} | "
                         f"{100 * rate / bandwidth:.0f}% | {allowed:.2f} |")
        lines += [""] + _verdict("Fastest layout per byte", totals, bandwidth)
        dividing = [total for total in totals
                    if all(shape["K"] % total["layout"]["block_size"] == 0
                           for shape in shapes.values())]
        if dividing and len(dividing) < len(totals):
            blocks = sorted({total["layout"]["block_size"] for total in dividing})
            lines += _verdict("Fastest among the blocks that divide every layer's input width "
                              f"({', '.join(map(str, blocks))}: the group sizes the "
                              "quantizers accept for this model)", dividing, bandwidth)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the artifact and the file")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--blocks", type=int, nargs="+", default=BLOCKS,
                        help="MatMulNBits block sizes (powers of 2, at least 16)")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render BENCHMARKS.md from the results file")
    args = parser.parse_args(argv)
    print(run_or_render(args.render_only, RESULTS, REPO / "BENCHMARKS.md", SECTION,
                        lambda: run(args), markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
