"""The exported models in a browser: headless Chromium on this machine, through the web
app's bench page (`toolkit bench --device browser`), against the same files in Python's
runtimes (`toolkit bench`), 1 thread.

    python -m benchmarks.web_bench [--work DIR] [--runs 20] [--min-seconds 3]
        [--from-results]

1. SmolLM2-135M-Instruct, GPTQ 4-bit g64 with the table and head at 4 bits, as an ONNX
   bundle (max context 512): decode tok/s and time to first token (the 64-token
   prefill) with onnxruntime-web's WASM backend vs onnxruntime in Python; the dense
   fp32 export beside it (onnxruntime-web's WASM build has no fast 4-bit MatMulNBits
   kernel, so the comparison shows what the browser gets from each).
2. Portrait segmentation, ms per frame in LiteRT.js: ours (portrait-256 as .tflite;
   random init, so speed only) next to MediaPipe's selfie segmenter (the .tflite the
   npm package @mediapipe/selfie_segmentation ships), interleaved in one run.
3. The Fashion-MNIST V-MoE, ms per image in onnxruntime-web: dense ViT, the
   super-class-routed MoE and the MoE with one expert in four dropped, interleaved
   (trained briefly here: speed only, the accuracy column is not the point).
4. Page weight: the bytes each demo page (chat, portrait, V-MoE) downloads before its
   first result, counted by the server that serves it (`toolkit serve`'s), split into the
   app, the npm runtimes and the bundles, with the time from opening the page to that
   result; and what each bench page downloaded before it posted its results.

Each group is one interleaved `toolkit bench` run in the browser and one on the host
(the two cannot be interleaved with each other: one runs in Chromium, one in Python
worker processes; they run back to back). Results: benchmarks/results/web.json and the
`web` section of BENCHMARKS.md; `--from-results` re-renders the section from the JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.markdown_section import replace_section  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "web.json"
SECTION = "web"
MEDIAPIPE = REPO / "apps/web/node_modules/@mediapipe/selfie_segmentation/selfie_segmentation.tflite"
GPTQ = ["--method", "gptq", "--bits", "4", "--group-size", "64"]
VMOE_TRAIN = ["--train-limit", "10000", "--epochs", "2"]


def toolkit(*argv: str) -> subprocess.CompletedProcess:
    child = subprocess.run([sys.executable, "-m", "toolkit", *argv], cwd=REPO,
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"toolkit {' '.join(argv[:3])} failed: {child.stderr[-2000:]}")
    return child


def build(work: Path) -> dict[str, dict[str, str]]:
    """Every file of the three groups (each skipped when already there)."""
    artifact, bundle = work / "gptq4", work / "smollm2-gptq4-bundle"
    if not artifact.exists():
        toolkit("compress", "--model", "smollm2-135m", *GPTQ, "--out", str(artifact),
                "--no-eval", "--quiet")
    if not (bundle / "bundle.json").exists():
        toolkit("export", "onnx", "--model", str(artifact), "--bundle", str(bundle),
                "--embedding-bits", "4", "--max-context", "512", "--quiet")
    dense_bundle = work / "smollm2-fp32-bundle"
    if not (dense_bundle / "bundle.json").exists():
        toolkit("export", "onnx", "--model", "smollm2-135m", "--bundle", str(dense_bundle),
                "--max-context", "512", "--quiet")
    portrait = work / "portrait-256.tflite"
    if not portrait.exists():
        toolkit("export", "tflite", "--model", "portrait-256", "--out", str(portrait), "--quiet")
    dense, moe, dropped = (work / f"vmoe-{n}" for n in ("dense", "moe", "dropped"))
    if not dense.exists():
        toolkit("train", "vmoe", "--router", "dense", *VMOE_TRAIN, "--out", str(dense),
                "--quiet")
    if not moe.exists():
        toolkit("train", "vmoe", "--router", "superclass", "--dense", str(dense), *VMOE_TRAIN,
                "--out", str(moe), "--quiet")
    if not dropped.exists():
        toolkit("compress", "--model", str(moe), "--method", "drop-experts", "--drop", "0.25",
                "--out", str(dropped), "--no-eval", "--quiet")
    vmoe = {}
    for name, source in (("dense ViT", dense), ("V-MoE (4 experts)", moe),
                         ("V-MoE, 1 expert dropped", dropped)):
        out = work / f"{source.name}.onnx"
        if not out.exists():
            toolkit("export", "onnx", "--model", str(source), "--out", str(out), "--quiet")
        vmoe[name] = str(out)
    portrait_bundle = work / "portrait-256-bundle"
    if not (portrait_bundle / "bundle.json").exists():
        toolkit("export", "tflite", "--model", "portrait-256", "--bundle", str(portrait_bundle),
                "--quiet")
    for source in (dense, moe, dropped):
        folder = work / f"{source.name}-bundle"
        if not (folder / "bundle.json").exists():
            toolkit("export", "onnx", "--model", str(source), "--bundle", str(folder), "--quiet")
    return {"llm": {"SmolLM2-135M GPTQ 4-bit, 4-bit table (ONNX bundle)": str(bundle),
                    "SmolLM2-135M dense fp32 (ONNX bundle)": str(dense_bundle)},
            "portrait": {"ours: portrait-256 (.tflite)": str(portrait),
                         "MediaPipe selfie segmenter (.tflite)": str(MEDIAPIPE)},
            "vmoe": vmoe}


def bench(paths: list[str], device: bool, runs: int, min_seconds: float, work: Path,
          tag: str) -> dict:
    report = work / f"{tag}-{'browser' if device else 'host'}.json"
    where = ["--device", "browser", "--backend", "wasm"] if device else []
    toolkit("bench", *paths, *where, "--threads", "1", "--runs", str(runs), "--min-seconds",
            str(min_seconds), "--json", str(report), "--quiet")
    return json.loads(report.read_text(encoding="utf-8"))


def host_path(path: str) -> str:
    """The file the host bench times: a bundle's model file."""
    folder = Path(path)
    if folder.is_dir():
        return str(folder / json.loads((folder / "bundle.json").read_text())["model"]["file"])
    return path


STATE = "document.body.dataset.state"  # the demo pages' ready/running/done/failed
DEMO_PAGES = {  # page -> (query, bundle folders under the work folder)
    "chat (SmolLM2 4-bit, verify: 16 tokens)": ("chat.html?nosw=1&verify=1&threads=1&bundle=",
                                                ["smollm2-gptq4-bundle"]),
    "portrait (ours + MediaPipe, one sample)": ("portrait.html?nosw=1&sample=1&bundle=",
                                                ["portrait-256-bundle"]),
    "V-MoE (3 bundles, one sample each)": ("vmoe.html?nosw=1&sample=1&bundles=",
                                           ["vmoe-dense-bundle", "vmoe-moe-bundle",
                                            "vmoe-dropped-bundle"]),
}


def page_weights(work: Path) -> dict:
    """Each demo page opened in headless Chromium (a fresh profile: nothing cached) on the
    bundles, served as `toolkit serve` serves them: bytes served by kind until the page's
    first result, and the seconds from opening it."""
    import time

    from toolkit.bench.device.browser import headless_page, wait_until
    from toolkit.bench.device.demo_site import served_bundles
    from toolkit.bench.device.run import web_app_root
    from toolkit.bench.device.server import BenchServer

    weights = {}
    for page, (query, folders) in DEMO_PAGES.items():
        bundles = served_bundles([str(work / f) for f in folders])
        files = {url: path for b in bundles for url, path in b.files.items()}
        links = ",".join(f"models/{b.name}/" for b in bundles)
        with BenchServer(web_app_root(), files, {}, lambda document: False) as server:
            start = time.monotonic()
            with headless_page(server.url("127.0.0.1", query + links)) as (tab, messages):
                if not wait_until(tab, lambda t=tab: t.evaluate(STATE) in ("done", "failed"),
                                  900):
                    raise RuntimeError(f"{page}: no result in 900 s ({messages[-3:]})")
                if tab.evaluate(STATE) == "failed":
                    raise RuntimeError(f"{page}: {tab.evaluate('window.__lastError')}")
                seconds = time.monotonic() - start
            weights[page] = {"served_bytes": server.sent_by_kind(), "seconds": seconds}
    return weights


def run(work: Path, runs: int, min_seconds: float) -> dict:
    groups = build(work)
    results = {"environment": environment(), "runs": runs, "min_seconds": min_seconds,
               "groups": {}, "pages": page_weights(work)}
    for tag, files in groups.items():
        names, paths = list(files), list(files.values())
        print(f"{tag}: browser", flush=True)
        browser = bench(paths, True, runs, min_seconds, work, tag)
        print(f"{tag}: host", flush=True)
        host = bench([host_path(p) for p in paths], False, runs, min_seconds, work, tag)
        results["groups"][tag] = {
            "names": names,
            "browser": _strip(browser), "host": _strip(host)}
    return results


def _strip(report: dict) -> dict:
    """The report without machine paths (and without the raw samples' bulk kept twice)."""
    for model in report["models"]:
        model["path"] = Path(model["path"]).name
        model["name"] = Path(model["name"]).name
    return report


def markdown(results: dict) -> str:
    env = results["environment"]
    groups = results["groups"]
    browser_env = next(iter(groups.values()))["browser"]["environment"]
    lines = [
        "## In the browser: the web app's bench page in headless Chromium",
        "",
        f"`python -m benchmarks.web_bench` on {env['cpu']} ({env['cores']} cores), "
        f"{env['date']}: `toolkit bench --device browser --backend wasm` (the page "
        "apps/web/bench.html in the system's headless Chromium, "
        f"{browser_env['user agent'].split(') ')[-1].split(' Safari')[0]}; "
        f"cross-origin isolated: {browser_env['cross-origin isolated']}) and `toolkit bench` "
        "on the same files in Python, 1 thread each; per group one interleaved run in the "
        "browser and one on the host, back to back (they cannot interleave with each "
        f"other). {results['runs']}+ timed runs and {results['min_seconds']:g}+ s per "
        "model; median (p50) with the p10-p90 spread of the per-run samples. Error: the "
        "browser's output against the same file in Python (LLM: the prompt's last-token "
        "logits).",
        ""]
    llm = groups["llm"]
    lines += ["**SmolLM2-135M decode** (64-token prompt; TTFT = the prompt's prefill):", "",
              "| file | runtime | MB | load s | TTFT ms | prefill tok/s | decode tok/s "
              "(p10-p90 ms/token) | max abs error |", "|---|---|---|---|---|---|---|---|"]
    for side in ("browser", "host"):
        for name, model in zip(llm["names"], llm[side]["models"], strict=True):
            lines.append(_llm_row(name, model))
    lines += ["", "The 4-bit file is slow in the browser because of the runtime, not the file: "
              "profiled in onnxruntime-web's WASM build, MatMulNBits takes nearly all of a "
              "decode step (its WASM build has no fast 4-bit kernel; WebGPU has one, but this "
              "machine has no GPU), so the dense fp32 file decodes faster there. Its larger "
              "error against Python comes from the compute, not the weights: the file asks for "
              "int8 activations (MatMulNBits accuracy level 4, kept because the export "
              "verified its tokens), which onnxruntime on this CPU uses and the WASM build "
              "computes in float."]
    lines += ["", "**Portrait segmentation** (LiteRT.js in the browser; LiteRT in Python):",
              "", "| model | runtime | MB | load s | ms / frame (p10-p90) | max abs error |",
              "|---|---|---|---|---|---|"]
    for side in ("browser", "host"):
        for name, model in zip(groups["portrait"]["names"], groups["portrait"][side]["models"],
                               strict=True):
            lines.append(_vision_row(name, model))
    lines += ["", "**Fashion-MNIST V-MoE** (onnxruntime-web WASM in the browser; onnxruntime "
              "in Python):", "", "| model | runtime | MB | load s | ms / image (p10-p90) | "
              "max abs error |", "|---|---|---|---|---|---|"]
    for side in ("browser", "host"):
        for name, model in zip(groups["vmoe"]["names"], groups["vmoe"][side]["models"],
                               strict=True):
            lines.append(_vision_row(name, model))
    lines += _page_weight_lines(results)
    return "\n".join(lines) + "\n"


def _page_weight_lines(results: dict) -> list[str]:
    """The two page-weight tables: each demo page's first result, and each bench page."""
    groups = results["groups"]
    lines = ["", "**Page weight of the demos** (each page opened in a fresh headless Chromium "
              "profile on its bundles, served as `toolkit serve` serves them: the bytes served "
              "before its first result, and the time from opening the page to that result; "
              "the service worker is off (`?nosw=1`): on a first visit it also stores the "
              "pinned runtimes for offline use, in the background, not counted here):",
              "", "| page | app | npm runtimes | bundles | total | seconds to first result |",
              "|---|---|---|---|---|---|"]
    for page, weight in results.get("pages", {}).items():
        served = weight["served_bytes"]
        total = sum(served.values())
        lines.append(f"| {page} | {served['app'] / 1e3:.0f} kB | {served['runtime'] / 1e6:.1f} "
                     f"MB | {served['models'] / 1e6:.1f} MB | {total / 1e6:.1f} MB | "
                     f"{weight['seconds']:.1f} |")
    lines += ["", "**Bench pages** (what each bench run above downloaded before it posted its "
              "results):", "",
              "| page | app | npm runtimes | models | total |", "|---|---|---|---|---|"]
    for tag, title in (("llm", "SmolLM2 decode (2 models)"), ("portrait", "portrait (2 models)"),
                       ("vmoe", "V-MoE (3 models)")):
        served = groups[tag]["browser"]["served_bytes"]
        total = served["app"] + served["runtime"] + served["models"] + served["bench"]
        lines.append(f"| {title} | {served['app'] / 1e3:.0f} kB | {served['runtime'] / 1e6:.1f} "
                     f"MB | {served['models'] / 1e6:.1f} MB | {total / 1e6:.1f} MB |")
    return lines


def _spread(model: dict) -> str:
    import numpy as np

    samples = model["samples_ms"]
    return f"{np.percentile(samples, 10):.2f}-{np.percentile(samples, 90):.2f}"


def _error(model: dict) -> str:
    accuracy = model.get("accuracy")
    return f"{accuracy['max_abs_error']:.1e}" if accuracy else "- (the reference)"


def _llm_row(name: str, model: dict) -> str:
    llm = model["llm"]
    return (f"| {name} | {model['runtime']} | {model['file_bytes'] / 1e6:.1f} | "
            f"{model['load_seconds']:.2f} | {llm['prefill_ms']['p50_ms']:.0f} | "
            f"{llm['prefill_tokens_per_s']:.1f} | **{llm['decode_tokens_per_s']:.2f}** "
            f"({_spread(model)}) | {_error(model)} |")


def _vision_row(name: str, model: dict) -> str:
    return (f"| {name} | {model['runtime']} | {model['file_bytes'] / 1e6:.2f} | "
            f"{model['load_seconds']:.2f} | **{model['latency']['p50_ms']:.2f}** "
            f"({_spread(model)}) | {_error(model)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the artifacts and files "
                        "(default: a temporary one)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--from-results", action="store_true",
                        help="render BENCHMARKS.md from the results file, without running")
    args = parser.parse_args()
    if args.from_results:
        results = json.loads(RESULTS.read_text(encoding="utf-8"))
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="web-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        results = run(work, args.runs, args.min_seconds)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    replace_section(REPO / "BENCHMARKS.md", SECTION, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
