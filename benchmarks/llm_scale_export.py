"""The export part of benchmarks/llm_scale.py (`--part export`): a large synthetic
artifact exported to each target, with each export's peak RSS.

    python -m benchmarks.llm_scale --part export --shapes afm-3b [--targets onnx,coreml]

RTN 4-bit of the synthetic `shape` (streaming compress), then, in fresh processes:

- onnx: `toolkit export onnx --engine streaming` (export.onnx.decoder_graph: one weight
  at a time), once writing only (`--no-verify`: the exporter's own peak) and once with
  verification (onnxruntime loads the whole file and decodes greedy tokens; then PyTorch,
  read one part at a time, scores the prompt and those tokens);
- coreml: `toolkit export coreml --engine streaming --chunks N` (export.coreml.chunked:
  one chunk of layers read, converted and freed at a time) with its structural
  verification (Core ML runs on macOS only), each chunk's size listed;
- tflite: `toolkit export tflite --engine streaming` (export.litert.chunked: chunks of
  layers, as many as keep each under 1.5 GB of float32 weights, each converted by
  litert-torch and freed in turn; 4-bit linears carried as int4 blockwise FCs) with its
  verification (the chunks run in sequence by ai-edge-litert, then PyTorch with the
  file's weights and the runtime's int8 inputs emulated, one chunk at a time), each
  chunk's size listed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

EXPORT_TARGETS = ("onnx", "coreml", "tflite")
COREML_CHUNKS = 8


def export_rows(shape: str, args, work: Path) -> list[dict]:
    from benchmarks.llm_scale import dir_bytes, measured, synthesize
    from models.large_shapes import shape_named

    spec = shape_named(shape)
    source = synthesize(shape, None, work)
    group = 64 if all(n % 64 == 0 for n in (spec.hidden, spec.intermediate)) else 32
    artifact = work / f"{shape}-rtn4"
    compress = measured(["compress", "--model", str(source), "--method", "rtn", "--bits", "4",
                         "--group-size", str(group), "--out", str(artifact), "--overwrite",
                         "--engine", "streaming", "--no-eval", "--quiet"], work)
    base = {"shape": shape, "params": spec.param_count(), "recipe": f"rtn 4-bit g{group}",
            "artifact_bytes": dir_bytes(artifact), "compress_peak_rss": compress["peak_rss"],
            "compress_wall": compress["wall"], "max_context": args.export_context}
    targets = args.targets.split(",") if isinstance(args.targets, str) else args.targets
    rows = []
    for target in targets:
        for verify in ((False, True) if target == "onnx" else (True,)):
            rows.append({**base, **_export_row(target, verify, artifact, args, work)})
            print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(artifact, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(source, ignore_errors=True)
    return rows


def _export_row(target: str, verify: bool, artifact: Path, args, work: Path) -> dict:
    from benchmarks.llm_scale import measured

    folder = work / "export"
    out = folder / {"onnx": "model.onnx", "coreml": "model.mlpackage",
                    "tflite": "model.tflite"}[target]
    flags = ["--new-tokens", "8"] if verify else ["--no-verify"]
    if target == "coreml":
        flags += ["--chunks", str(COREML_CHUNKS)]
    argv = ["export", target, "--model", str(artifact), "--engine", "streaming", "--out",
            str(out), "--overwrite", "--max-context", str(args.export_context), "--quiet",
            *flags]
    try:
        run = measured(argv, work)
    except RuntimeError as exc:  # a refusal (exit 2) is the row's result
        shutil.rmtree(folder, ignore_errors=True)
        return {"target": target, "verify": verify, "refused": str(exc).splitlines()[-1]}
    report = run["report"]
    verification = report.get("verification") or {}
    shutil.rmtree(folder, ignore_errors=True)
    return {"target": target, "verify": verify, "file_bytes": report["file_bytes"],
            "peak_rss": run["peak_rss"], "wall": run["wall"], "carried": report["carried"],
            "verdict": report["verdict"], "tokens_match": verification.get("tokens_match"),
            "logit_rel_error": (verification.get("logits") or {}).get("relative_error"),
            "chunks": [{"file": c["file"], "bytes": c["bytes"], "layers": c["layers"]}
                       for c in report.get("chunks", [])]}


def export_lines(data: dict) -> list[str]:
    from benchmarks.llm_scale import gb

    rows = data.get("export", [])
    if not rows:
        return []
    lines = [
        "",
        "Exporting a large artifact: `toolkit compress --method rtn --bits 4 --engine "
        "streaming` of the synthetic bf16 checkpoint, then `toolkit export TARGET --engine "
        "streaming` of the packed artifact, max context "
        f"{rows[0]['max_context']}, each in a fresh process (benchmarks/llm_scale_export.py). "
        "ONNX (one weight read, converted and appended to the external data file at a time) "
        "ran twice: writing only (`--no-verify`), and writing plus verification "
        "(onnxruntime loads the whole file and decodes 8 greedy tokens; then PyTorch, read "
        "one part at a time, scores the prompt and those tokens). Core ML is converted in "
        f"{COREML_CHUNKS} chunks of layers, one at a time, and verified structurally (Core ML "
        "runs only on macOS). LiteRT is converted in chunks too (as many as keep each under "
        "1.5 GB of float32 weights), its 4-bit linears as int4 blockwise FCs, and verified "
        "by running them in sequence. Peak RSS is the process's ru_maxrss. Other jobs shared the 2 "
        "cores while some of these ran: wall times are noisy, peaks are not.",
        "",
        "| shape | artifact | artifact GB | compress peak RSS GB | target | file GB | "
        "carried | export | peak RSS GB | wall s | verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        # Rows without a target come from the run before the fused attention (issue 16):
        # the same writer with the standard-ops graph.
        target = row.get("target", "onnx (standard-ops graph, earlier run)")
        head = (f"| {row['shape']} | {row['recipe']} | {gb(row['artifact_bytes'])} | "
                f"{gb(row['compress_peak_rss'])} | {target} | ")
        if row.get("refused"):
            lines.append(head + f"- | - | refused | - | - | {row['refused']} |")
            continue
        carried = ", ".join(f"{n} x {what}" for what, n in row["carried"].items())
        if not row["verify"]:
            verified = "not run"
        elif row["tokens_match"] is None:
            verified = f"{row['verdict']} (structural)"
        else:
            verified = (f"{row['verdict']}: tokens "
                        f"{'same' if row['tokens_match'] else 'differ'}, logits rel. error "
                        f"{row['logit_rel_error']:.1e}")
        chunks = row.get("chunks") or []
        if chunks:
            carried += "; chunks GB: " + ", ".join(gb(c["bytes"]) for c in chunks)
        lines.append(head + f"{gb(row['file_bytes'])} | {carried} | "
                     f"{'write + verify' if row['verify'] else 'write only'} | "
                     f"**{gb(row['peak_rss'])}** | {row['wall']:.0f} | {verified} |")
    return lines
