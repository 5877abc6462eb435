"""What the chunked LiteRT export's dynamic int8 FC inputs cost on SmolLM2-135M, and what
buys it back (export.litert.int8_outliers, export.litert.blockwise).

    python -m benchmarks.litert_int8_inputs [--work DIR] [--windows 32] [--no-runtime]
                                            [--from-results]

XNNPACK quantizes an int4 blockwise FC's input to int8 with one scale per token. For two
4-bit g64 artifacts of SmolLM2-135M (`toolkit compress --method gptq|rtn --bits 4
--group-size 64 --no-eval`), in PyTorch with the file's weights (the chunk module,
export.litert.chunk_module) and the runtime's int8 inputs emulated, against the same
module in float compute, on `--windows` held-out Wikipedia windows of 128 tokens:

1. each FC alone emulated (KL on the first 4 windows): where the error comes from;
2. the n most sensitive FCs kept in float compute, every other one emulated (what
   DEQUANTIZE'd float layers would buy, at 16 bytes per parameter at run time);
3. the forms: one scale per row (XNNPACK's), outlier channels split off (up to 8 per
   FC input, each above 4x the median channel's peak on 4 x 128 calibration tokens),
   input slices of 128 / 64 inputs with a scale each, both, and for comparison ONNX's
   int8 compute (MatMulNBits accuracy_level 4: symmetric, a scale per 32 inputs).

Columns: mean next-token KL(float || int8), top-1 agreement, hard flips (positions where
the int8 argmax differs and float compute preferred its own token by 0.1 logit or more:
what verification refuses, export.llm.near_ties), the worst window's KL.

Then (unless --no-runtime) the real files: `toolkit export tflite --chunks 2` with the
defaults and with `--outlier-channels 0 --int8-slice 0`, verified (default prompt, 16
tokens), and one decode step of each timed with `toolkit bench` (1 thread). Results:
benchmarks/results/litert_int8_inputs.json and the `litert-int8-inputs` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.markdown_section import replace_section  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "litert_int8_inputs.json"
MODEL = "smollm2-135m"
METHODS = ("gptq", "rtn")
WINDOW = 128
SENSITIVITY_WINDOWS = 4
FLOAT_COUNTS = (0, 10, 30, 60, 120)
HARD_MARGIN = 0.1  # export.llm.near_ties.TIE_MARGIN
# name -> (outlier channels, slice width, emulation): export.litert.int8_outliers defaults
FORMS = {"one scale per row (XNNPACK)": (0, 0, "row"),
         "outlier channels split": (8, 0, "row"),
         "slices of 128": (0, 128, "row"),
         "split + slices of 128 (default)": (8, 128, "row"),
         "split + slices of 64": (8, 64, "row"),
         "ONNX int8 compute (sym., 32 inputs)": (0, 0, "block32")}


def artifact(work: Path, method: str) -> Path:
    out = work / f"{method}4-g64"
    if not (out / "toolkit.json").is_file():
        _cli("compress", "--model", MODEL, "--method", method, "--bits", "4", "--group-size",
             "64", "--out", str(out), "--no-eval", "--quiet", "--overwrite")
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    child = subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=REPO,
                           capture_output=True, text=True)
    if child.returncode not in (0, 2):
        raise RuntimeError(f"toolkit {args[0]} failed: {child.stderr[-2000:]}")
    return child


class Emulated:
    """One artifact's decoder as a single LiteRT chunk module, float and emulated."""

    def __init__(self, path: Path, windows: int):
        import torch

        import models
        from export.coreml.chunk_plan import Chunk
        from export.litert.chunk_module import LitertChunk
        from export.litert.int8_outliers import input_peaks
        from export.llm.decoder_weights import ModuleDecoderWeights
        from toolkit.commands.export_cmd import _calibration_windows
        from toolkit.data.streams import cached_streams

        loaded = models.load_model(str(path))
        self.torch, self.LitertChunk = torch, LitertChunk
        self.weights = ModuleDecoderWeights(loaded.module, 512, loaded.quantized)
        self.chunk = Chunk(0, 1, 0, self.weights.n_blocks)
        held_out = cached_streams(loaded.tokenizer).wiki_eval
        self.windows = [held_out[i * 1000:i * 1000 + WINDOW] for i in range(windows)]
        self.module = LitertChunk(self.weights, self.chunk, slice_width=0)
        calibration = [torch.tensor(ids) for ids in _calibration_windows(loaded.tokenizer)]
        self.peaks = input_peaks(self.module, self.module.blockwise, calibration, self.forward)
        self.reference = [self.forward(x) for x in self.windows]

    def forward(self, x):
        keys = self.torch.zeros(self.module.cache_shape())
        with self.torch.no_grad():
            out = self.module(x.view(1, -1), self.torch.zeros(1, dtype=self.torch.long), keys,
                              keys.clone())
        return out[0][0]

    def build(self, channels: int, slice_width: int) -> None:
        from export.litert.int8_outliers import choose_outliers

        outliers = {name: choose_outliers(peak, channels) for name, peak in self.peaks.items()}
        self.module = self.LitertChunk(self.weights, self.chunk, outliers, slice_width)

    def score(self, emulated: set[str], count: int | None = None) -> dict:
        torch = self.torch
        for name, linear in self.module.blockwise.items():
            linear.emulate = name in emulated
        kls, agree, hard = [], [], 0
        for x, ref in list(zip(self.windows, self.reference, strict=True))[:count]:
            logits = self.forward(x)
            p, q = torch.log_softmax(ref, -1), torch.log_softmax(logits, -1)
            kls.append(float((p.exp() * (p - q)).sum(-1).mean()))
            pick, best = logits.argmax(-1), ref.argmax(-1)
            agree.append(float((pick == best).float().mean()))
            margin = ref.gather(-1, best[:, None]) - ref.gather(-1, pick[:, None])
            hard += int((margin >= HARD_MARGIN).sum())
        return {"kl": float(np.mean(kls)), "top1": float(np.mean(agree)), "hard_flips": hard,
                "tokens": WINDOW * len(kls), "worst_window_kl": max(kls)}


def emulated_rows(path: Path, windows: int) -> dict:
    import export.litert.blockwise as blockwise

    model = Emulated(path, windows)
    names = list(model.module.blockwise)
    sensitivity = {name: model.score({name}, SENSITIVITY_WINDOWS)["kl"] for name in names}
    order = sorted(names, key=lambda n: -sensitivity[n])
    float_rows = {n: model.score(set(order[n:])) for n in FLOAT_COUNTS}
    forms, per_row = {}, blockwise.dynamic_int8
    for label, (channels, width, how) in FORMS.items():
        model.build(channels, width)
        blockwise.dynamic_int8 = per_row if how == "row" else _symmetric_blocks
        try:
            row = model.score(set(names))
        finally:
            blockwise.dynamic_int8 = per_row
        split = [m for m in model.module.blockwise.values() if m.keep is not None]
        row["outlier_channels"] = sum(len(m.outlier_channels) for m in split)
        row["float_bytes"] = sum(4 * (m.outlier_weight.numel() + m.keep.numel())
                                 for m in split)
        row["fcs_per_layer"] = sum(len(m.bounds) for m in model.module.layers[0].modules()
                                   if hasattr(m, "bounds"))
        forms[label] = row
    by_type: dict[str, list[float]] = {}
    for name, kl in sensitivity.items():
        by_type.setdefault(name.rsplit(".", 1)[-1], []).append(kl)
    return {"sensitivity_top": [[n, sensitivity[n]] for n in order[:10]],
            "sensitivity_by_type": {t: [float(np.mean(v)), max(v)] for t, v in by_type.items()},
            "float_fcs": {str(n): row for n, row in float_rows.items()}, "forms": forms}


def _symmetric_blocks(x, block: int = 32):
    """MatMulNBits' accuracy_level 4 input: symmetric int8, a scale per 32 inputs."""
    import torch

    groups = x.unflatten(-1, (x.shape[-1] // block, block))
    scale = groups.abs().amax(-1, keepdim=True) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.round(groups / scale).clamp(-127, 127) * scale).flatten(-2)


def runtime_rows(path: Path, work: Path) -> dict:
    rows, files = {}, []
    for label, extra in (("defaults", []),
                         ("--outlier-channels 0 --int8-slice 0",
                          ["--outlier-channels", "0", "--int8-slice", "0"])):
        slug = "defaults" if not extra else "plain"
        out, report = work / f"{path.name}-{slug}" / "m.tflite", work / f"{path.name}-{slug}.json"
        _cli("export", "tflite", "--model", str(path), "--chunks", "2", "--out", str(out),
             "--overwrite", "--json", str(report), "--quiet", *extra)
        data = json.loads(report.read_text(encoding="utf-8"))
        check = data.get("verification", {})
        forced = check.get("teacher_forced") or {}
        rows[label] = {
            "verdict": data["verdict"], "file_bytes": data["file_bytes"],
            "outliers": {k: v for k, v in data.get("int8_input_outliers", {}).items()
                         if k != "by_layer"},
            "logits_relative_error": check.get("logits", {}).get("relative_error"),
            "tokens_match": check.get("tokens_match"), "tokens_agree": check.get("tokens_agree"),
            "disagreements": forced.get("teacher_forced_disagreements", []),
            "margins": forced.get("pytorch_margins", []),
            "vs_artifact": check.get("vs_artifact"), "vs_emulated": check.get("vs_emulated")}
        if data["verdict"].startswith("passed"):
            files.append((label, out.with_name("m_chunk1.tflite")))
        else:  # nothing written: export it unverified for the timing
            _cli("export", "tflite", "--model", str(path), "--chunks", "2", "--out", str(out),
                 "--overwrite", "--no-verify", "--quiet", *extra)
            files.append((label, out.with_name("m_chunk1.tflite")))
    timing = work / f"{path.name}-bench.json"
    _cli("bench", *[str(f) for _, f in files], "--threads", "1", "--runs", "30",
         "--min-seconds", "5", "--json", str(timing))
    timed = json.loads(timing.read_text(encoding="utf-8"))
    for (label, _), model in zip(files, timed["models"], strict=True):
        rows[label]["decode_p50_ms"] = model["latency"]["p50_ms"]
    return rows


def markdown(data: dict) -> str:
    env, args = data["environment"], data["args"]
    lines = ["## LiteRT int8 FC inputs: where the error comes from and what buys it back", "",
             f"`python -m benchmarks.litert_int8_inputs` on {env['cpu']} ({env['cores']} "
             f"cores), {env['date']}; SmolLM2-135M, 4-bit g64 artifacts "
             "(`toolkit compress --method gptq|rtn --bits 4 --group-size 64`). Emulated rows: "
             "the chunk module with the file's weights, XNNPACK's per-token int8 inputs "
             f"emulated, against the same module in float compute, on {args['windows']} "
             f"held-out Wikipedia windows of {WINDOW} tokens; hard flips: the int8 argmax "
             "differs and float compute preferred its own token by 0.1 logit or more "
             "(what verification refuses; near ties are allowed). Runtime rows: "
             "`toolkit export tflite --chunks 2`, verified on the default prompt (16 tokens, "
             "teacher-forced against float compute), decode p50 from one `toolkit bench` "
             "run per model at 1 thread, its two files interleaved (other jobs shared the "
             "machine: compare the rows of a model, not the sections)."]
    for method, result in data["models"].items():
        emulated = result["emulated"]
        lines += ["", f"### {method.upper()} 4-bit g64", "",
                  "Each FC alone emulated (KL, first 4 windows), most sensitive first: "
                  + ", ".join(f"{n.replace('model.layers.', 'L')} {kl:.4f}"
                              for n, kl in emulated["sensitivity_top"][:6])
                  + "; mean (max) by type: "
                  + ", ".join(f"{t} {m:.4f} ({x:.4f})"
                              for t, (m, x) in sorted(emulated["sensitivity_by_type"].items())),
                  "", "| form | KL | top-1 | hard flips | worst window KL | outlier channels "
                  "| float bytes | int4 FCs per layer |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, row in emulated["forms"].items():
            lines.append(f"| {label} | {row['kl']:.5f} | {row['top1']:.4f} | "
                         f"{row['hard_flips']}/{row['tokens']} | {row['worst_window_kl']:.4f} | "
                         f"{row['outlier_channels']} | {row['float_bytes']:,} | "
                         f"{row['fcs_per_layer']} |")
        for n, row in emulated["float_fcs"].items():
            if n != "0":
                lines.append(f"| {n} most sensitive FCs float, one scale per row | "
                             f"{row['kl']:.5f} | {row['top1']:.4f} | "
                             f"{row['hard_flips']}/{row['tokens']} | "
                             f"{row['worst_window_kl']:.4f} | - | - | 7 |")
        if result.get("runtime"):
            lines += ["", "| file | verdict | logits vs float | teacher-forced disagreements "
                      "(float's margin) | tokens = artifact's | MB | decode p50 ms |",
                      "|---|---|---:|---|---|---:|---:|"]
            for label, row in result["runtime"].items():
                flips = ", ".join(f"{p} ({m:.3f})" for p, m in
                                  zip(row["disagreements"], row["margins"], strict=False))
                same = (row["vs_artifact"] or {}).get("tokens_match")
                rel = row["logits_relative_error"]
                lines.append(f"| {label} | {row['verdict']} | "
                             f"{'-' if rel is None else f'{rel:.3f}'} | {flips or 'none'} | "
                             f"{'-' if same is None else 'yes' if same else 'no'} | "
                             f"{row['file_bytes'] / 1e6:.1f} | {row.get('decode_p50_ms', 0):.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path)
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--no-runtime", action="store_true")
    p.add_argument("--from-results", action="store_true")
    args = p.parse_args()
    if args.from_results:
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
    else:
        import torch

        torch.set_num_threads(2)
        work = args.work or Path(tempfile.mkdtemp(prefix="litert-int8-"))
        work.mkdir(parents=True, exist_ok=True)
        data = {"environment": environment(), "args": {"windows": args.windows}, "models": {}}
        for method in METHODS:
            path = artifact(work, method)
            data["models"][method] = {"emulated": emulated_rows(path, args.windows)}
            if not args.no_runtime:
                data["models"][method]["runtime"] = runtime_rows(path, work)
            RESULTS.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    body = markdown(data)
    replace_section(REPO / "BENCHMARKS.md", "litert-int8-inputs", body)
    print(body)


if __name__ == "__main__":
    main()
