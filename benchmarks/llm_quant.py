"""Benchmark: quantizing SmolLM2-135M (RTN, GPTQ, AWQ, NNCF, palettization, mixed bits,
pruning + quantization stacked).

    python benchmarks/llm_quant.py [--eval-windows 16] [--kick-questions N] [--variants a,b]

Each variant is one recipe run by `toolkit run` in its own child process (calibration:
32 x 512 Wikipedia tokens, seed 0), saved as a real artifact so its bytes on disk are
measured, then scored by `toolkit eval DIR --suite kick` (perplexity on Wikipedia and
news, factoid QA closed- and open-book) in another child. Results accumulate in
benchmarks/results/llm_quant.json (a re-run skips variants done with the same protocol
unless --fresh); the table in BENCHMARKS.md is regenerated after every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "llm_quant.json"
sys.path.insert(0, str(ROOT))

from benchmarks.markdown_section import replace_section  # noqa: E402


def _q(method: str, bits: int, group: int | None, **extra) -> list[dict]:
    return [{"method": method, "bits": bits, "group_size": group, **extra}]


# name -> list of stages (a recipe); [] = the dense model. Ordered by what matters most,
# so an interrupted run still has the comparisons the issue asks for.
VARIANTS: dict[str, list[dict]] = {
    "dense": [],
    "rtn-4b-g64": _q("rtn", 4, 64),
    "gptq-4b-g64": _q("gptq", 4, 64),
    "awq-4b-g64": _q("awq", 4, 64),
    "rtn-3b-g64": _q("rtn", 3, 64),
    "gptq-3b-g64": _q("gptq", 3, 64),
    "awq-3b-g64": _q("awq", 3, 64),
    "palettize-mixed-3.7": [{"method": "palettize", "group_rows": 16, "target_bits": 3.7}],
    "palettize-3b": [{"method": "palettize", "bits": 3, "group_rows": 16}],
    "palettize-mixed-3.01": [{"method": "palettize", "group_rows": 16, "target_bits": 3.01}],
    "wanda50+gptq-4b-g64": [{"method": "wanda", "sparsity": 0.5}, *_q("gptq", 4, 64)],
    "nncf-int4-g64": _q("rtn", 4, 64, backend="nncf"),
    "palettize-mixed-3.5": [{"method": "palettize", "group_rows": 16, "target_bits": 3.5}],
    "palettize-4b": [{"method": "palettize", "bits": 4, "group_rows": 16}],
    # The same average bits as uniform 3-bit, mixing 2, 3 and 4 bits.
    "palettize-mixed-3.01-234": [{"method": "palettize", "group_rows": 16, "target_bits": 3.01,
                                  "bits_choices": [2, 3, 4]}],
    # Plain k-means on the weights alone, against the default activation-weighted one.
    "palettize-3b-data-free": [{"method": "palettize", "bits": 3, "group_rows": 16,
                                "weighted": False}],
    "rtn-2b-g32": _q("rtn", 2, 32),
    "gptq-2b-g32": _q("gptq", 2, 32),
    "nncf-awq-int4-g64": _q("awq", 4, 64, backend="nncf"),
    "rtn-4b-channel": _q("rtn", 4, None),
    "gptq-4b-channel": _q("gptq", 4, None),
    "rtn-8b-channel": _q("rtn", 8, None),
}


def cli_worker(argv: list[str], rss_file: str) -> int:
    """Child process: run one toolkit command in-process and record its peak RSS."""
    from toolkit.cli import main

    code = main(argv)
    Path(rss_file).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return code


def run_cli(argv: list[str]) -> float:
    """Run `toolkit ARGV` in a child process; return its peak RSS in MB."""
    with tempfile.NamedTemporaryFile(suffix=".rss", delete=False) as handle:
        rss_file = handle.name
    child = subprocess.run([sys.executable, __file__, "--worker", rss_file, "--", *argv],
                           capture_output=True, text=True, cwd=ROOT)
    if child.returncode != 0:
        raise RuntimeError(f"toolkit {' '.join(argv[:2])} failed:\n{child.stderr[-3000:]}")
    rss = float(Path(rss_file).read_text())
    Path(rss_file).unlink()
    return rss


def run_variant(name: str, args: argparse.Namespace, work: Path) -> dict:
    stages = VARIANTS[name]
    from benchmarks.environment import environment

    env = environment()
    result: dict = {"variant": name, "stages": stages,
                    "run_on": {k: env[k] for k in ("date", "cpu", "cores", "torch")}}
    model = "smollm2-135m"
    if stages:
        recipe = work / f"{name}.yaml"
        recipe.write_text(json.dumps({
            "calibration": {"samples": args.calib_samples, "seq_len": 512, "seed": 0},
            "stages": stages}), encoding="utf-8")  # JSON is YAML
        out, report = work / name, work / f"{name}.json"
        start = time.perf_counter()
        result["compress_peak_rss_mb"] = run_cli(
            ["run", str(recipe), "--model", model, "--out", str(out), "--no-eval", "--quiet",
             "--overwrite", "--json", str(report)])
        result["compress_wall_seconds"] = time.perf_counter() - start
        manifest = json.loads(report.read_text(encoding="utf-8"))
        quant = manifest.get("quantization") or {}
        result.update(
            bits_per_weight=quant.get("bits_per_weight"), quant_bytes=quant.get("bytes"),
            weights_bytes=manifest["files"]["weights_bytes"],
            sparsity=manifest["sparsity"]["overall"],
            compress_seconds=manifest["timing_seconds"]["compress_total"],
            allocation=_allocation_summary(quant.get("allocation")))
        model = str(out)
    kick = work / f"{name}.kick.json"
    eval_args = ["eval", model, "--suite", "kick", "--eval-windows", str(args.eval_windows),
                 "--json", str(kick), "--quiet"]
    if args.kick_questions:
        eval_args += ["--kick-questions", str(args.kick_questions)]
    if args.mmlu_questions:
        eval_args += ["--mmlu-questions", str(args.mmlu_questions)]
    start = time.perf_counter()
    result["eval_peak_rss_mb"] = run_cli(eval_args)
    result["eval_wall_seconds"] = time.perf_counter() - start
    result["kick"] = json.loads(kick.read_text(encoding="utf-8"))
    if stages:
        shutil.rmtree(work / name, ignore_errors=True)  # keep the disk small
    return result


def _allocation_summary(allocation: dict | None) -> dict | None:
    if not allocation:
        return None
    counts: dict[str, int] = {}
    for bits in allocation.get("layer_bits", {}).values():
        counts[str(bits)] = counts.get(str(bits), 0) + 1
    return {"target": allocation.get("target_bits"), "achieved": allocation.get("achieved_bits"),
            "layers_per_bits": counts}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-windows", default="16",
                        help="perplexity windows per stream (default: 16; `all` = full)")
    parser.add_argument("--kick-questions", type=int, default=100,
                        help="factoid (and MMLU) questions per model (default: 100)")
    # MMLU is not in the table (SmolLM2-135M is at chance on it); a few questions keep the
    # suite complete at a fraction of its cost. It does not change the factoid subsample.
    parser.add_argument("--mmlu-questions", type=int, default=20,
                        help="MMLU dev questions per model (default: 20)")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--variants", help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results")
    parser.add_argument("--redo", default="", metavar="A,B",
                        help="run these variants again even if results exist (after a "
                             "method changed)")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="results JSON (default: benchmarks/results/llm_quant.json); "
                             "another file lets a second run proceed in parallel")
    parser.add_argument("--merge", type=Path, metavar="OTHER.json",
                        help="add the variants of another results file run with the same "
                             "protocol, then re-render")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite BENCHMARKS.md from the saved results without running")
    return parser.parse_args()


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return cli_worker(sys.argv[4:], sys.argv[2])
    args = parse_args()
    from benchmarks.llm_quant_table import render_table

    if args.merge:
        results, other = (json.loads(p.read_text()) for p in (args.results, args.merge))
        if other["protocol"] != results["protocol"]:
            print(f"{args.merge} used another protocol: not merged", file=sys.stderr)
            return 2
        results["variants"].update({k: v for k, v in other["variants"].items()
                                    if k not in results["variants"]})
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    if args.render_only or args.merge:
        replace_section(ROOT / "BENCHMARKS.md", "llm_quant",
                        render_table(json.loads(args.results.read_text())))
        return 0
    protocol = {"eval_windows": args.eval_windows, "calib_samples": args.calib_samples,
                "kick_questions": args.kick_questions}
    results = ({} if args.fresh or not args.results.exists()
               else json.loads(args.results.read_text()))
    if results.get("protocol") != protocol:
        results = {"protocol": protocol, "variants": {}}
    if "environment" not in results:  # the run that starts the file: the table's header
        from benchmarks.environment import environment

        env = environment()
        results["environment"] = {k: env[k] for k in ("date", "cpu", "cores", "torch")}
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    work = ROOT / "runs" / f"bench-quant-{args.results.stem}"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # relative paths from here on keep machine paths out of the results
    work = work.relative_to(ROOT)
    redo = {n for n in args.redo.split(",") if n}
    unknown = sorted(redo - set(VARIANTS))
    if unknown:
        print(f"unknown variant {unknown[0]!r} in --redo", file=sys.stderr)
        return 2
    for name in names:
        if name in results["variants"] and name not in redo:
            continue
        print(f"[bench] {name} ...", flush=True)
        try:
            results["variants"][name] = run_variant(name, args, work)
        except RuntimeError as exc:
            print(f"[bench] {name} failed: {exc}", file=sys.stderr, flush=True)
            results["variants"][name] = {"variant": name, "error": str(exc)[-500:]}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        if args.results == RESULTS:  # a parallel run is rendered when merged
            replace_section(ROOT / "BENCHMARKS.md", "llm_quant", render_table(results))
        print(f"[bench] {name} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
