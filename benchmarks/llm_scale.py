"""LLMs at the mission's size: peak memory and time of the streaming engine on ~3B and 7B
shapes, and the streaming engine against the in-memory one on SmolLM2-135M.

    python -m benchmarks.llm_scale                       # everything (hours on 2 cores)
    python -m benchmarks.llm_scale --part smollm2        # SmolLM2 rows only
    python -m benchmarks.llm_scale --part large --shapes afm-3b

Every measured job is a fresh `python -m toolkit compress` subprocess (so its peak RSS is
its own: `ru_maxrss` of that process, file-backed pages of memory-mapped shards
included), reading a synthetic random-weight bf16 checkpoint written shard by shard by
`toolkit synth` (models/synthetic_checkpoint.py). Weights do not change the work done, so
random weights measure memory and time honestly; quality is measured on real weights
(BENCHMARKS.md's SmolLM2 tables). Times come from the job's own report (capture, read,
forward, method, write; per block); bytes read and written are what the engine read from
the source and wrote to its staging directory (shards, checkpoints, index).

The SmolLM2 rows run each recipe with `--engine memory` and `--engine streaming`
alternately (`--repeats` times), compare every output tensor (bit-identical or not), and
report the median wall time of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.environment import environment
from benchmarks.llm_scale_export import EXPORT_TARGETS, export_lines, export_rows
from benchmarks.markdown_section import replace_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "llm_scale.json"
SECTION = "llm-scale"
RECIPES = {  # name -> recipe stages
    "wanda 50%": [{"method": "wanda", "sparsity": 0.5}],
    "gptq 4-bit g64": [{"method": "gptq", "bits": 4, "group_size": 64}],
    "wanda 50% + gptq 4-bit g64": [{"method": "wanda", "sparsity": 0.5},
                                   {"method": "gptq", "bits": 4, "group_size": 64}],
}
# The wrapper a measured job runs in: the toolkit's own main, then its peak RSS.
_WRAPPER = (
    "import json, resource, sys\n"
    "from toolkit.cli import main\n"
    "code = main(sys.argv[2:])\n"
    "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
    "child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
    "open(sys.argv[1], 'w').write(json.dumps({'code': code, 'peak_rss': peak,\n"
    "                                         'peak_rss_children': child}))\n"
    "sys.exit(code)\n")


def measured(argv: list[str], work: Path, allow_failure: bool = False) -> dict:
    """Run `toolkit ARGV` in a fresh process; its exit code, peak RSS (its own, and the
    largest of its child processes', e.g. a runtime verifying in a child), wall time and
    the --json report it wrote. A failure raises, unless `allow_failure` and it wrote its
    stats (a failed verification: "error" is then its last stderr line)."""
    stats, report = work / "stats.json", work / "report.json"
    for f in (stats, report):
        f.unlink(missing_ok=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _WRAPPER, str(stats), *argv,
                             "--json", str(report)], cwd=REPO, capture_output=True,
                            text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0 and not (allow_failure and stats.exists()):
        raise RuntimeError(f"toolkit {' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    out = json.loads(stats.read_text())
    if result.returncode != 0:
        out["error"] = (result.stderr.strip().splitlines() or [""])[-1]
    out["wall"] = wall
    out["report"] = json.loads(report.read_text()) if report.exists() else None
    return out


def write_recipe(stages: list[dict], samples: int, seq_len: int, path: Path) -> Path:
    lines = [f"calibration: {{samples: {samples}, seq_len: {seq_len}, seed: 0}}", "stages:"]
    lines += [f"  - {json.dumps(stage)}" for stage in stages]
    path.write_text("\n".join(lines) + "\n")
    return path


def all_tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- large shapes -------------------------------------------------------------------------
def large_rows(shape: str, args, work: Path) -> list[dict]:
    from models.large_shapes import shape_named

    spec = shape_named(shape)
    source = synthesize(shape, None, work)
    partial = args.partial_layers.get(shape)
    n_params = spec.param_count()
    # AFM's FFN width 8032 = 32 x 251: groups of 64 do not divide it, so 32 there.
    group = 64 if all(n % 64 == 0 for n in (spec.hidden, spec.intermediate)) else 32
    rows = []
    for name in args.recipes:
        stages = [{**s, "group_size": group} if "group_size" in s else s
                  for s in RECIPES[name]]
        recipe = write_recipe(stages, args.calib_samples, args.seq_len, work / "recipe.yaml")
        name = name.replace("g64", f"g{group}")
        out = work / "out"
        cut = partial if partial and any(s["method"] == "gptq" for s in stages) else None
        model = synthesize(shape, cut, work) if cut else source
        run = measured(["run", str(recipe), "--model", str(model), "--out", str(out),
                        "--overwrite", "--engine", "streaming", "--no-eval", "--quiet"], work)
        report = run["report"]
        rows.append(_large_row(shape, name, n_params, model, out, run, report, args))
        rows[-1]["layers"] = [cut or spec.layers, spec.layers]
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    if args.eval_windows:
        rows.append(_eval_row(shape, n_params, source, args, work))
        print(json.dumps(rows[-1]), flush=True)
    if not args.keep:
        for folder in work.glob(f"{shape}-bf16*"):
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def _large_row(shape, name, n_params, source, out, run, report, args) -> dict:
    timing, io = report["timing_seconds"], report["io"]
    parts = {k: timing.get(k, 0.0) for k in ("capture", "read", "forward", "method", "write")}
    blocks = io["block_seconds"]
    return {"shape": shape, "recipe": name, "params": n_params,
            "fp32_bytes": 4 * n_params, "bf16_bytes": 2 * n_params,
            "source_bytes": dir_bytes(source), "output_bytes": dir_bytes(out),
            "peak_rss": run["peak_rss"], "wall": run["wall"],
            "compress": timing["compress_total"], "parts": parts,
            "block_median": statistics.median(blocks), "block_min": min(blocks),
            "block_max": max(blocks), "blocks": len(blocks),
            "read_bytes": io["read_bytes"], "written_bytes": io["written_bytes"],
            "forward_dtype": report["engine"]["forward_dtype"],
            "calibration": f"{args.calib_samples}x{args.seq_len}"}


def _eval_row(shape, n_params, source, args, work) -> dict:
    run = measured(["eval", str(source), "--engine", "streaming", "--eval-windows",
                    str(args.eval_windows), "--eval-seq-len", str(args.seq_len), "--quiet"],
                   work)
    return {"shape": shape, "recipe": f"eval: perplexity, {args.eval_windows} windows x "
            f"{args.seq_len} per stream", "params": n_params, "fp32_bytes": 4 * n_params,
            "bf16_bytes": 2 * n_params, "peak_rss": run["peak_rss"], "wall": run["wall"]}


def synthesize(shape: str, layers: int | None, work: Path) -> Path:
    """The synthetic bf16 checkpoint of `shape` (its first `layers` blocks when given)."""
    source = work / (f"{shape}-bf16" + (f"-{layers}layers" if layers else ""))
    if not source.exists():
        start = time.perf_counter()
        cut = ["--layers", str(layers)] if layers else []
        subprocess.run([sys.executable, "-m", "toolkit", "synth", shape, "--out", str(source),
                        "--dtype", "bfloat16", "--seed", "0", "--quiet", *cut], cwd=REPO,
                       check=True)
        print(f"{source.name}: synthesized in {time.perf_counter() - start:.0f} s", flush=True)
    return source


# --- fp32 against bf16 calibration forwards ------------------------------------------------
def dtype_rows(args, work: Path) -> list[dict]:
    """Wanda on the first blocks of afm-3b with fp32 and bf16 forwards, alternating: the
    forward time per block decides `--forward-dtype auto` (toolkit/hardware.py)."""
    layers = 4
    source = synthesize("afm-3b", layers, work)
    recipe = write_recipe(RECIPES["wanda 50%"], args.calib_samples, args.seq_len,
                          work / "recipe.yaml")
    forward: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for dtype in forward:
            run = measured(["run", str(recipe), "--model", str(source), "--out",
                            str(work / "out"), "--overwrite", "--engine", "streaming",
                            "--forward-dtype", dtype, "--no-eval", "--quiet"], work)
            forward[dtype].append(run["report"]["timing_seconds"]["forward"] / layers)
    shutil.rmtree(work / "out", ignore_errors=True)
    from toolkit.hardware import cpu_has_fast_bf16

    return [{"dtype": dtype, "forward_per_block": statistics.median(values),
             "spread": [min(values), max(values)], "fast_bf16_cpu": cpu_has_fast_bf16(),
             "calibration": f"{args.calib_samples}x{args.seq_len}",
             "repeats": len(values)}
            for dtype, values in forward.items()]


# --- SmolLM2: streaming against in-memory --------------------------------------------------
def smollm2_rows(args, work: Path) -> list[dict]:
    rows = []
    for name in args.recipes:
        recipe = write_recipe(RECIPES[name], args.smollm2_samples, args.smollm2_seq_len,
                              work / "recipe.yaml")
        walls: dict[str, list[float]] = {"memory": [], "streaming": []}
        peaks: dict[str, int] = {}
        identical = True
        for _ in range(args.repeats):
            outs = {}
            for engine in ("memory", "streaming"):
                outs[engine] = work / f"smol-{engine}"
                run = measured(["run", str(recipe), "--model", "smollm2-135m", "--out",
                                str(outs[engine]), "--overwrite", "--engine", engine,
                                "--no-eval", "--quiet"], work)
                walls[engine].append(run["report"]["timing_seconds"]["compress_total"])
                peaks[engine] = max(peaks.get(engine, 0), run["peak_rss"])
                if engine == "streaming":
                    parts = run["report"]["timing_seconds"]
            a, b = all_tensors(outs["memory"]), all_tensors(outs["streaming"])
            identical &= set(a) == set(b) and all(
                a[k].float().equal(b[k].float()) for k in a)
        memory, stream = (statistics.median(walls[e]) for e in ("memory", "streaming"))
        rows.append({"recipe": name, "identical": identical, "memory_s": memory,
                     "streaming_s": stream, "ratio": stream / memory,
                     "memory_spread": [min(walls["memory"]), max(walls["memory"])],
                     "streaming_spread": [min(walls["streaming"]), max(walls["streaming"])],
                     "peak_memory": peaks["memory"], "peak_streaming": peaks["streaming"],
                     "parts": {k: parts.get(k, 0.0) for k in
                               ("capture", "read", "forward", "method", "write")},
                     "calibration": f"{args.smollm2_samples}x{args.smollm2_seq_len}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --- the Markdown section -------------------------------------------------------------------
def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def shares(parts: dict[str, float]) -> str:
    total = sum(parts.values()) or 1.0
    return " / ".join(f"{100 * parts[k] / total:.0f}" for k in
                      ("read", "forward", "method", "write"))


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [
        "## LLMs at the mission's size: streaming, block by block",
        "",
        f"`python -m benchmarks.llm_scale` on {env['cpu']} ({env['cores']} cores), torch "
        f"{env['torch']}, {env['date']}. Each row is one fresh `toolkit run --engine "
        "streaming` process on a synthetic bf16 checkpoint (`toolkit synth`, random weights: "
        "the work is the same as for real ones); peak RSS is the process's own ru_maxrss, "
        "memory-mapped shard pages included. Calibration "
        f"{data['args']['calib_samples']} x {data['args']['seq_len']} tokens unless the row "
        "says otherwise (the default is 32 x 512; rows marked `32 x 512` measure the peak at "
        "the default, on the first blocks). The machine was shared with test runs and the "
        "other rows' jobs while these ran: times are noisy, peaks are not. The 16 x 256 "
        "rows ran before each activation stream was updated in place (commit 'Streaming: "
        "each activation stream is updated in place'): they held two copies of the "
        "activations (~0.1-0.2 GB at 16 x 256), so their peaks are upper bounds. "
        "Output: sharded Hugging Face directory; bf16 weights stay bf16, GPTQ linears are "
        "packed. Time shares: read / forward / method / write, % of the four. "
        "Totals marked * ran the first blocks of the shape only (`toolkit synth --layers`; "
        "GPTQ on a 7B shape took about two minutes per block on these shared 2 cores) and are the "
        "median block time x the shape's blocks; peak memory is set by one block, so it "
        "is the full model's.",
        "",
        "| shape | recipe | params | fp32 / bf16 GB | peak RSS GB | total s | s per block "
        "(median, min-max) | read GB | written GB | time shares % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data.get("large", []):
        if "parts" not in row:
            lines.append(f"| {row['shape']} | {row['recipe']} | {row['params'] / 1e9:.2f}B | "
                         f"{gb(row['fp32_bytes'])} / {gb(row['bf16_bytes'])} | "
                         f"**{gb(row['peak_rss'])}** | {row['wall']:.0f} | | | | |")
            continue
        done, full = row.get("layers", [row["blocks"], row["blocks"]])
        total = (f"{row['compress']:.0f}" if done == full else
                 f"{row['block_median'] * full:.0f}* ({done} of {full} blocks run)")
        lines.append(
            f"| {row['shape']} | {row['recipe']} | {row['params'] / 1e9:.2f}B | "
            f"{gb(row['fp32_bytes'])} / {gb(row['bf16_bytes'])} | **{gb(row['peak_rss'])}** | "
            f"{total} | {row['block_median']:.1f} ({row['block_min']:.1f}-"
            f"{row['block_max']:.1f}) | {gb(row['read_bytes'])} | {gb(row['written_bytes'])} "
            f"| {shares(row['parts'])} |")
    lines += export_lines(data) + _smollm2_lines(data) + _dtype_lines(data)
    return "\n".join(lines)


def _smollm2_lines(data: dict) -> list[str]:
    lines: list[str] = []
    smol = data.get("smollm2", [])
    if smol:
        lines += [
            "",
            f"SmolLM2-135M-Instruct, streaming against in-memory in the same run "
            f"({data['args']['repeats']} alternating repeats, median compression seconds "
            f"[min-max]; calibration {smol[0]['calibration'].replace('x', ' x ')} tokens). "
            "Identical: every output tensor equal (bf16/fp32 compared as fp32).",
            "",
            "| recipe | bit-identical | in-memory s | streaming s | ratio | peak RSS GB "
            "(memory / streaming) | streaming time shares % |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in smol:
            m, s = row["memory_spread"], row["streaming_spread"]
            lines.append(
                f"| {row['recipe']} | {'yes' if row['identical'] else '**no**'} | "
                f"{row['memory_s']:.1f} [{m[0]:.1f}-{m[1]:.1f}] | {row['streaming_s']:.1f} "
                f"[{s[0]:.1f}-{s[1]:.1f}] | {row['ratio']:.2f} | {gb(row['peak_memory'])} / "
                f"{gb(row['peak_streaming'])} | {shares(row['parts'])} |")
    return lines


def _dtype_lines(data: dict) -> list[str]:
    lines: list[str] = []
    dtype = data.get("dtype", [])
    if dtype:
        lines += ["", "Calibration forward dtype on afm-3b's first 4 blocks (wanda, "
                  f"{dtype[0]['calibration'].replace('x', ' x ')} tokens, "
                  f"{dtype[0].get('repeats', data['args']['repeats'])} run(s) each, "
                  "alternating; this CPU "
                  f"{'has' if dtype[0]['fast_bf16_cpu'] else 'lacks'} AMX/AVX512-BF16): "
                  + "; ".join(f"{r['dtype']} {r['forward_per_block']:.2f} s per block "
                              f"[{r['spread'][0]:.2f}-{r['spread'][1]:.2f}]" for r in dtype)
                  + ". `--forward-dtype auto` picks bf16 on such CPUs (and GPUs), fp32 "
                  "elsewhere."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "large", "export", "smollm2", "dtype"),
                   default="all")
    p.add_argument("--shapes", default="afm-3b,llama-2-7b")
    p.add_argument("--recipes", default=",".join(RECIPES),
                   help="comma-separated, from: " + "; ".join(RECIPES).replace("%", "%%"))
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--partial-layers", default="llama-2-7b=8,mistral-7b=8",
                   help="SHAPE=N,...: run recipes with GPTQ on the first N blocks only")
    p.add_argument("--smollm2-samples", type=int, default=32)
    p.add_argument("--smollm2-seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--export-context", type=int, default=512,
                   help="--max-context of the exported ONNX files")
    p.add_argument("--targets", default=",".join(EXPORT_TARGETS),
                   help="export targets of --part export (default: %(default)s)")
    p.add_argument("--work", type=Path, help="folder for the synthetic checkpoints "
                   "(needs ~2.5x the bf16 size free; default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    p.add_argument("--artifact", type=Path,
                   help="--part export: export this packed RTN artifact of the shape instead "
                        "of compressing again (its compress figures are taken from the "
                        "results file's earlier rows of that shape and recipe)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    args.partial_layers = {k: int(v) for k, v in (item.split("=") for item in
                           args.partial_layers.split(",") if item)}
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        p.error(f"unknown recipe {unknown[0]!r}: choose from {'; '.join(RECIPES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="llm-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    data = json.loads(args.results.read_text()) if args.results.exists() else {}
    # Paths are left out: they name this machine's folders, not the measurement.
    data.update({"environment": environment(),
                 "args": {k: v for k, v in vars(args).items()
                          if k not in ("work", "results", "markdown", "artifact")}})
    if args.part in ("all", "large"):
        kept = [r for r in data.get("large", []) if r["shape"] not in args.shapes.split(",")]
        data["large"] = kept
        for shape in args.shapes.split(","):
            data["large"] += large_rows(shape, args, work)
            _save(data, args)
    if args.part in ("all", "export"):
        args.previous_export = data.get("export", [])
        targets = args.targets.split(",")
        data["export"] = [r for r in data.get("export", [])
                          if r["shape"] not in args.shapes.split(",")
                          or r.get("target", "onnx") not in targets]
        for shape in args.shapes.split(","):
            data["export"] += export_rows(shape, args, work)
            _save(data, args)
    if args.part in ("all", "dtype"):
        data["dtype"] = dtype_rows(args, work)
        _save(data, args)
    if args.part in ("all", "smollm2"):
        data["smollm2"] = smollm2_rows(args, work)
        _save(data, args)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _save(data: dict, args) -> None:
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(data, indent=1) + "\n")
    replace_section(args.markdown, SECTION, markdown(data))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
