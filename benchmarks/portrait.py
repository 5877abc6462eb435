"""Benchmark: our portrait segmenters against MediaPipe's selfie segmenter, all as LiteRT
files on the same CPU and the same images.

    python benchmarks/portrait.py [--smoke] [--sparsity 0.25 0.5] [--work runs/portrait-bench]

1. MediaPipe: `selfie_segmentation.tflite` extracted from the pinned mediapipe wheel
   (benchmarks/mediapipe_selfie.py: `pip download --no-deps`, nothing installed).
2. Ours, each step the toolkit's own CLI in a child process (skipped when its output is
   already there, so a re-run only re-measures): `toolkit train portrait` (dense,
   generated portraits), `toolkit compress --method channel-prune --recover kd`
   (pruned + distilled from the dense model, one per --sparsity), `toolkit export
   tflite` of each, float and static int8 (`--int8`, calibrated on the artifact's
   stored training images).
3. Every file through LiteRT (ai-edge-litert): latency at 1 and 2 threads, all files
   interleaved in one `toolkit.bench` run per thread count; mIoU, boundary-band mIoU and
   boundary F on the held-out generated portraits (the training job's test seed); and on
   scikit-image's astronaut photo (a real person) the IoU of each person mask with
   MediaPipe's.

The test portraits are GENERATED (toolkit/data/portraits), and our models were trained
on such portraits while MediaPipe was trained on real photos: on this test set the
comparison favours ours, and the astronaut agreement is the only real-photo number.
Results: benchmarks/results/portrait.json and the `portrait` section of BENCHMARKS.md
(`--smoke`: tiny sizes, results in the work folder, BENCHMARKS.md untouched).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.markdown_section import replace_section  # noqa: E402
from benchmarks.mediapipe_selfie import MEDIAPIPE_VERSION, selfie_model, sha256  # noqa: E402
from benchmarks.portrait_table import goal, render  # noqa: E402

# Training images, test images, epochs, batch, peak lr (pinned to `toolkit train
# portrait`'s defaults, so the dense row is the model a user gets), KD steps, int8
# calibration images, timed runs and seconds per latency run.
SIZES = {"full": dict(train_size=512, test_size=64, epochs=8, batch_size=8, lr=6e-3,
                      recover_steps=300, calibration=64, runs=30, min_seconds=4.0),
         "smoke": dict(train_size=16, test_size=8, epochs=1, batch_size=8, lr=3e-3,
                       recover_steps=2, calibration=8, runs=5, min_seconds=0.2)}


def toolkit(*argv: str) -> None:
    child = subprocess.run([sys.executable, "-m", "toolkit", *argv], cwd=ROOT,
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"toolkit {' '.join(argv[:3])} failed: {child.stderr[-2000:]}")


def build(args: argparse.Namespace, size: dict, work: Path) -> dict[str, dict]:
    """Our artifacts and LiteRT files: {name: {"artifact", "file", "export"}}."""
    dense = work / "dense"
    if not (dense / "toolkit.json").is_file():
        toolkit("train", "portrait", "--out", str(dense), "--overwrite", "--quiet",
                "--train-size", str(size["train_size"]), "--test-size",
                str(size["test_size"]), "--epochs", str(size["epochs"]),
                "--batch-size", str(size["batch_size"]), "--lr", str(size["lr"]),
                "--seed", str(args.seed), "--threads", "1")
    variants = [("dense", dense)]
    for sparsity in args.sparsity:
        pruned = work / f"pruned{round(100 * sparsity)}"
        if not (pruned / "toolkit.json").is_file():
            toolkit("compress", "--model", str(dense), "--method", "channel-prune",
                    "--sparsity", str(sparsity), "--recover", "kd", "--recover-steps",
                    str(size["recover_steps"]), "--out", str(pruned), "--overwrite",
                    "--quiet", "--threads", "1", "--json", str(work / f"{pruned.name}.json"))
        variants.append((f"pruned {round(100 * sparsity)}%", pruned))
    models = {}
    for name, artifact in variants:
        for int8 in (False, True):
            stem = artifact.name + ("-int8" if int8 else "")
            out, report = work / f"{stem}.tflite", work / f"{stem}.export.json"
            if not report.is_file():
                toolkit("export", "tflite", "--model", str(artifact), "--out", str(out),
                        "--overwrite", "--quiet", "--json", str(report),
                        *(["--int8", "--calibration-images", str(size["calibration"])]
                          if int8 else []))
            models[name + ("+int8" if int8 else "")] = {
                "artifact": artifact, "file": out, "export": json.loads(report.read_text())}
    return models


def manifest(artifact: Path) -> dict:
    return json.loads((artifact / "toolkit.json").read_text())


def latency(files: dict[str, Path], size: dict, threads: int) -> dict[str, dict]:
    """p50/p90 per file from one interleaved toolkit.bench run at `threads`."""
    from toolkit.bench.session import BenchOptions, BenchTarget, run_bench

    targets = [BenchTarget(name, str(path), "litert") for name, path in files.items()]
    report = run_bench(targets, BenchOptions(threads=threads, warmup=3, runs=size["runs"],
                                             min_seconds=size["min_seconds"]))
    return {m["name"]: {"p50_ms": m["latency"]["p50_ms"], "p90_ms": m["latency"]["p90_ms"],
                        "runs": len(m["samples_ms"])} for m in report["models"]}


def measure(args: argparse.Namespace, size: dict, work: Path, mediapipe: Path,
            ours: dict[str, dict]) -> dict:
    from benchmarks.portrait_quality import (
        astronaut,
        litert_maps,
        mask_iou,
        quality,
        stored_elements,
    )
    from toolkit.commands.train_portrait_job import TEST_SEED_OFFSET
    from toolkit.data.portraits import generate_portraits

    dense = manifest(ours["dense"]["artifact"])
    h, w = dense["config"]["height"], dense["config"]["width"]
    test_seed = dense["data"]["test"]["seed"]
    assert test_seed == args.seed + TEST_SEED_OFFSET, "train job's test seed changed"
    test = generate_portraits(size["test_size"], test_seed, h, w)
    if test.sha256 != dense["data"]["test"]["sha256"]:
        raise RuntimeError("regenerated test portraits differ from the training job's")
    photo = astronaut(h, w)
    files = {"MediaPipe selfie": mediapipe} | {n: m["file"] for n, m in ours.items()}
    rows = {}
    reference = litert_maps(mediapipe, photo, unit_range=True)
    for name, path in files.items():
        unit = name == "MediaPipe selfie"
        maps = litert_maps(path, test.images, unit_range=unit)
        rows[name] = {"file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT)
                                  else path.name),
                      "file_bytes": path.stat().st_size,
                      "stored_elements": stored_elements(path),
                      "input": f"{h}x{w}" if not unit else "256x256",
                      "test": quality(maps, test),
                      "astronaut_iou_vs_mediapipe": mask_iou(
                          litert_maps(path, photo, unit_range=unit), reference)}
    for name, entry in ours.items():
        metrics = manifest(entry["artifact"]).get("metrics") or {}
        rows[name]["params"] = deployed_params(entry["artifact"])
        # The artifact's own PyTorch numbers on the same test portraits, for comparison.
        rows[name]["pytorch_test"] = metrics.get("test") or metrics.get("after")
    rows["MediaPipe selfie"]["params"] = None
    for threads in args.threads:
        for name, timing in latency(files, size, threads).items():
            rows[name].setdefault("latency", {})[str(threads)] = timing
    return {"models": rows, "test_data": test.source, "test_sha256": test.sha256,
            "training": training_settings(ours["dense"]["artifact"]),
            "mediapipe": {"version": MEDIAPIPE_VERSION, "sha256": sha256(mediapipe),
                          "bytes": mediapipe.stat().st_size}}


def training_settings(dense: Path) -> dict:
    """How the dense model was trained, as its artifact records it."""
    source = manifest(dense)
    training = source["training"]
    return {"width_mult": source["config"]["width_mult"]} | {
        key: training.get(key) for key in ("train_images", "epochs", "batch_size", "lr",
                                           "seed", "threads")}


def deployed_params(artifact: Path) -> int:
    """Parameters of the deployed network: the hair-style head is not exported."""
    from models import load_model

    module = load_model(str(artifact)).module
    head = sum(p.numel() for p in module.attribute_head.parameters())
    return sum(p.numel() for p in module.parameters()) - head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (16 training portraits, 1 epoch, 2 KD steps)")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.25, 0.5],
                        help="shares of expansion channels channel-prune removes, one "
                             "pruned model each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work", type=Path, default=None,
                        help="artifacts and files (default: runs/portrait-bench[-smoke])")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/edge-toolkit/mediapipe"),
                        help="where the mediapipe wheel and the extracted model are kept")
    parser.add_argument("--no-markdown", action="store_true")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render BENCHMARKS.md from benchmarks/results/portrait.json")
    args = parser.parse_args()
    kind = "smoke" if args.smoke else "full"
    size = SIZES[kind]
    work = ROOT / (args.work or Path("runs") / f"portrait-bench{'-smoke' * args.smoke}")
    if args.render_only:
        return render_only(work)
    work.mkdir(parents=True, exist_ok=True)
    mediapipe = selfie_model(args.cache)
    ours = build(args, size, work)
    results = measure(args, size, work, mediapipe, ours)
    results.update({"kind": kind, "sizes": size, "sparsity": args.sparsity,
                    "environment": environment(), "goal": goal(results["models"])})
    # A smoke run's numbers mean nothing: they stay in the (git-ignored) work folder.
    out = work / "portrait_smoke.json" if args.smoke else \
        ROOT / "benchmarks" / "results" / "portrait.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    table = render(results)
    print(table)
    if not args.smoke and not args.no_markdown:
        replace_section(ROOT / "BENCHMARKS.md", "portrait", table)
    return 0


def render_only(work: Path) -> int:
    path = ROOT / "benchmarks" / "results" / "portrait.json"
    results = json.loads(path.read_text())
    if "training" not in results:  # results written before the script recorded it
        results["training"] = training_settings(work / "dense")
        path.write_text(json.dumps(results, indent=2) + "\n")
    replace_section(ROOT / "BENCHMARKS.md", "portrait", render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
