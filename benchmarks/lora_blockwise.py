"""Block-wise LoRA (the streaming engine's `lora`) on SmolLM2-135M: does it recover
perplexity that 4-bit round-to-nearest loses, the way the whole-model LoRA does?

    python -m benchmarks.lora_blockwise [--work DIR] [--calib-samples 32] [--block-steps 32]

Two `toolkit run --engine streaming` jobs in fresh processes on the same calibration
windows: RTN 4-bit g64, and RTN 4-bit g64 followed by `lora` (rank 16, block_steps Adam
steps per block, compress/recovery/lora_block.py). Each job's own evaluation (the
toolkit's default protocol: 16 windows x 512 tokens per held-out stream, read block by
block, adapters applied) gives the perplexities; the dense row is the first job's
"before". Results: benchmarks/results/lora_blockwise.json and the `lora-blockwise`
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.markdown_section import replace_section  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "lora_blockwise.json"
MODEL = "smollm2-135m"
RTN = {"method": "rtn", "bits": 4, "group_size": 64}


def recipes(args) -> dict[str, dict]:
    calibration = {"samples": args.calib_samples, "seq_len": 512, "seed": 0}
    lora = {"method": "lora", "rank": 16, "block_steps": args.block_steps}
    return {"rtn-4b-g64": {"calibration": calibration, "stages": [RTN]},
            "rtn-4b-g64+lora (block-wise)": {"calibration": calibration,
                                             "stages": [RTN, lora]}}


def run(name: str, recipe: dict, work: Path) -> dict:
    slug = name.split(" ")[0].replace("+", "-")
    path, out = work / f"{slug}.yaml", work / slug
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "toolkit", "run", str(path), "--model",
                            MODEL, "--engine", "streaming", "--out", str(out), "--overwrite",
                            "--quiet"], cwd=REPO, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"{name} failed: {child.stderr[-2000:]}")
    manifest = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    lora = next((s["report"] for s in manifest["stages"] if s["kind"] == "lora"), None)
    row = {"wall_seconds": time.perf_counter() - start, "metrics": manifest["metrics"],
           "bits_per_weight": manifest.get("quantization", {}).get("bits_per_weight")}
    if lora is not None:
        row["lora"] = {k: lora[k] for k in ("rank", "block_steps", "blocks_recovered",
                                            "adapter_bits_per_weight", "linears")}
        row["lora"]["blocks"] = len(lora["blocks"])
    return row


def markdown(data: dict) -> str:
    env, args = data["environment"], data["args"]
    rows = data["rows"]
    first = next(iter(rows.values()))
    lines = ["## Block-wise LoRA under the streaming engine: SmolLM2-135M", "",
             f"`python -m benchmarks.lora_blockwise` on {env['cpu']} ({env['cores']} cores), "
             f"{env['date']}. Each row is one `toolkit run --engine streaming` (calibration "
             f"{args['calib_samples']} x 512 tokens, seed 0); perplexity is the job's own "
             "evaluation, the toolkit's default protocol (16 windows x 512 tokens per "
             "stream, read block by block, adapters applied). Block-wise LoRA: rank 16, "
             f"{args['block_steps']} Adam steps per block on one calibration micro-batch each, "
             "each block fitted to the dense block's output on the adapted upstream's "
             "activations (compress/recovery/lora_block.py). Wall s: the whole job, its "
             "evaluations before and after included. The whole-model LoRA (KL to the dense "
             "model's next-token distributions) is measured in the recovery sweep's section.",
             "", "| model | Wikipedia ppl | news ppl | bits per weight | blocks improved | "
             "wall s |", "|---|---|---|---|---|---|"]
    dense = first["metrics"]["before"]
    lines.append(f"| dense | {dense['wikipedia']['ppl']:.2f} | {dense['news']['ppl']:.2f} "
                 "| 32 | - | - |")
    for name, row in rows.items():
        after = row["metrics"]["after"]
        lora = row.get("lora")
        bits = f"{row['bits_per_weight']:.2f}" if row.get("bits_per_weight") else "-"
        if lora:
            bits += f" + {lora['adapter_bits_per_weight']:.2f} (LoRA r{lora['rank']})"
        improved = f"{lora['blocks_recovered']} of {lora['blocks']}" if lora else "-"
        lines.append(f"| {name} | {after['wikipedia']['ppl']:.2f} | {after['news']['ppl']:.2f} "
                     f"| {bits} | {improved} | {row['wall_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--block-steps", type=int, default=32)
    p.add_argument("--from-results", action="store_true")
    args = p.parse_args()
    if args.from_results:
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="lora-blockwise-"))
        work.mkdir(parents=True, exist_ok=True)
        data = {"environment": environment(),
                "args": {"calib_samples": args.calib_samples, "block_steps": args.block_steps},
                "rows": {name: run(name, recipe, work)
                         for name, recipe in recipes(args).items()}}
        RESULTS.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    body = markdown(data)
    replace_section(REPO / "BENCHMARKS.md", "lora-blockwise", body)
    print(body)


if __name__ == "__main__":
    main()
