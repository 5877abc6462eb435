"""Benchmark: SmolLM2-135M dense, Wanda 50%, 4-bit palettized and 8-bit RTN (per channel,
LiteRT's native weight-only format), exported to ONNX, LiteRT and Core ML and (ONNX,
LiteRT, PyTorch eager) run side by side on this machine.

    python benchmarks/export_bench.py [--model smollm2-135m] [--max-context 256]
        [--threads 1] [--runs 20] [--min-seconds 5]

Every step is the toolkit's own CLI in a child process: `toolkit compress` makes each
variant's artifact, `toolkit export` writes and verifies each file (greedy tokens equal to
PyTorch's), and one `toolkit bench` run times every file and every PyTorch artifact
interleaved, so the ratios to PyTorch eager hold on a noisy machine. Core ML files cannot
run here: their sizes and compressed-op counts are reported. A second table says, for
every file, what compression it carries and what it dropped. Results go to
benchmarks/results/export_bench.json and the `export` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.markdown_section import replace_section  # noqa: E402

VARIANTS = {
    "dense": None,
    "wanda50": ["--method", "wanda", "--sparsity", "0.5"],
    "palettize4": ["--method", "palettize", "--bits", "4", "--group-rows", "16"],
    "rtn8": ["--method", "rtn", "--bits", "8", "--group-size", "channel"],
}
TARGETS = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}


def toolkit(*argv: str) -> None:
    child = subprocess.run([sys.executable, "-m", "toolkit", *argv], cwd=ROOT,
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"toolkit {' '.join(argv[:2])} failed: {child.stderr[-2000:]}")


def build(args: argparse.Namespace, work: Path) -> dict:
    """Artifacts and exports, each skipped when already there (re-runs only re-time)."""
    made: dict = {}
    for variant, flags in VARIANTS.items():
        artifact = work / variant
        if flags and not artifact.exists():
            toolkit("compress", "--model", args.model, *flags, "--out", str(artifact),
                    "--no-eval", "--quiet")
        source = str(artifact) if flags else args.model
        made[variant] = {"pytorch": source, "exports": {}}
        for target, suffix in TARGETS.items():
            out, report = work / f"{variant}{suffix}", work / f"{variant}.{target}.json"
            if not report.exists():
                toolkit("export", target, "--model", source, "--out", str(out),
                        "--max-context", str(args.max_context), "--json", str(report),
                        "--overwrite", "--quiet")
            made[variant]["exports"][target] = json.loads(report.read_text())
    return made


def bench(args: argparse.Namespace, work: Path, made: dict) -> dict:
    """One interleaved `toolkit bench` run per variant: its PyTorch artifact (first, so it
    is the accuracy reference and the ratio's base), its ONNX and its LiteRT file."""
    timing = {}
    for variant, entry in made.items():
        report = work / f"{variant}.bench.json"
        toolkit("bench", entry["pytorch"], str(work / f"{variant}.onnx"),
                str(work / f"{variant}.tflite"), "--threads", str(args.threads),
                "--runs", str(args.runs), "--min-seconds", str(args.min_seconds),
                "--max-context", str(args.max_context),
                "--prompt-tokens", str(args.prompt_tokens), "--json", str(report),
                "--html", str(work / f"{variant}.bench.html"))
        timing[variant] = json.loads(report.read_text())
    return timing


def render(made: dict, timing: dict) -> str:
    lines = ["| variant | format | size MB | load ms | prefill tok/s | decode tok/s | "
             "decode p50 ms [p10-p90] | x PyTorch decode | max abs err vs PyTorch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, entry in made.items():
        by_path = {m["name"]: m for m in timing[variant]["models"]}
        eager = by_path[entry["pytorch"]]
        for label, path in (("PyTorch eager", entry["pytorch"]),
                            ("ONNX", entry["exports"]["onnx"]["path"]),
                            ("LiteRT", entry["exports"]["tflite"]["path"])):
            model = by_path[path]
            lat, llm = model["latency"], model["llm"]
            size = "-" if model["file_bytes"] is None else f"{model['file_bytes'] / 1e6:.1f}"
            error = model["accuracy"]["max_abs_error"] if model["accuracy"] else None
            lines.append(
                f"| {variant} | {label} | {size} | {1000 * model['load_seconds']:.0f} "
                f"| {llm['prefill_tokens_per_s']:.0f} | {llm['decode_tokens_per_s']:.1f} | "
                f"{lat['p50_ms']:.2f} [{_pct(model, 10):.2f}-{lat['p90_ms']:.2f}] | "
                f"{eager['latency']['p50_ms'] / lat['p50_ms']:.2f} | "
                f"{'-' if error is None else f'{error:.2e}'} |")
    lines += ["", "| variant | format | size MB | carried (layers) | dropped | verified |",
              "|---|---|---|---|---|---|"]
    for variant, entry in made.items():
        for target, export in entry["exports"].items():
            carried = "; ".join(f"{how} ({n})" for how, n in export["carried"].items())
            dropped = "; ".join(sorted({d["why"] for d in export["dropped"]}))
            lines.append(f"| {variant} | {target} | {export['file_bytes'] / 1e6:.1f} | "
                         f"{carried or '-'} | {dropped or '-'} | {_verified(export)} |")
    first = next(iter(timing.values()))
    env = first["environment"]
    lines += ["", f"Machine: {env['cpu']}, {env['logical cpus']} logical CPUs, "
                  f"{env['threads per model']} thread(s) per model; onnxruntime "
                  f"{env.get('onnxruntime')}, ai-edge-litert {env.get('ai-edge-litert')}, "
                  f"torch {env['torch']}. Decode = one token after a "
                  f"{first['options']['prompt_tokens']}-token prefill, context "
                  f"{first['options']['max_context']}; x PyTorch = the variant's PyTorch "
                  "eager p50 / this p50, and the error is against that PyTorch model "
                  "(one interleaved run per variant)."]
    return "\n".join(lines)


def _verified(export: dict) -> str:
    check = export["verification"]
    if "checks" in check:  # Core ML: opened, not run
        verdict = "passed" if check["passed"] else "FAILED"
        return f"{len(check['checks'])} structural checks {verdict} (not run: Linux)"
    return (f"tokens {'match' if check['tokens_match'] else 'DIFFER'}, logit rel. err "
            f"{check['logits']['relative_error']:.1e}")


def _pct(model: dict, q: float) -> float:
    samples = sorted(model["samples_ms"])
    return samples[min(len(samples) - 1, int(q / 100 * len(samples)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-context", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--work", type=Path, default=Path("runs") / "export-bench",
                        help="artifacts and exported files (relative to the repository)")
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "export_bench.json")
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args()
    # Relative paths from here on keep machine paths out of the saved results.
    import os

    os.chdir(ROOT)
    args.work.mkdir(parents=True, exist_ok=True)
    made = build(args, args.work)
    timing = bench(args, args.work, made)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"exports": made, "bench": timing}, indent=1) + "\n")
    if not args.no_markdown:
        replace_section(ROOT / "BENCHMARKS.md", "export", render(made, timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
