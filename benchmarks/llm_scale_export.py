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
  litert-torch and freed in turn; 4-bit linears carried as int4 blockwise FCs, one per
  slice of ~128 inputs, outlier input channels split off) with its verification (the
  chunks run in sequence by ai-edge-litert, then PyTorch with the file's weights in float
  compute, one chunk at a time: tokens teacher-forced with near ties allowed, as for
  ONNX's int8 compute; the emulated int8 inputs and the artifact reported beside), each
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
    group = 64 if all(n % 64 == 0 for n in (spec.hidden, spec.intermediate)) else 32
    recipe = f"rtn 4-bit g{group}"
    given = getattr(args, "artifact", None)
    if given is not None:  # compressed before: its figures from the earlier rows
        artifact, source = Path(given), None
        earlier = next(r for r in getattr(args, "previous_export", [])
                       if r["shape"] == shape and r["recipe"] == recipe)
        compress = {"peak_rss": earlier["compress_peak_rss"], "wall": earlier["compress_wall"]}
    else:
        source = synthesize(shape, None, work)
        artifact = work / f"{shape}-rtn4"
        compress = measured(["compress", "--model", str(source), "--method", "rtn", "--bits",
                             "4", "--group-size", str(group), "--out", str(artifact),
                             "--overwrite", "--engine", "streaming", "--no-eval", "--quiet"],
                            work)
    base = {"shape": shape, "params": spec.param_count(), "recipe": recipe,
            "artifact_bytes": dir_bytes(artifact), "compress_peak_rss": compress["peak_rss"],
            "compress_wall": compress["wall"], "max_context": args.export_context}
    targets = args.targets.split(",") if isinstance(args.targets, str) else args.targets
    rows = []
    for target in targets:
        for verify in ((False, True) if target == "onnx" else (True,)):
            rows.append({**base, **_export_row(target, verify, artifact, args, work)})
            print(json.dumps(rows[-1]), flush=True)
    if source is not None:
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
        run = measured(argv, work, allow_failure=True)
    except RuntimeError as exc:  # a refusal (exit 2) is the row's result
        shutil.rmtree(folder, ignore_errors=True)
        return {"target": target, "verify": verify, "refused": str(exc).splitlines()[-1]}
    report = run["report"]
    shutil.rmtree(folder, ignore_errors=True)
    if report is None or (run["code"] != 0 and not report.get("verification")):
        return {"target": target, "verify": verify, "refused": run.get("error", "")}
    verification = report.get("verification") or {}
    against = verification.get("vs_artifact") or {}
    return {"target": target, "verify": verify, "file_bytes": report["file_bytes"],
            # a runtime verifying in a child process (LiteRT) counts too
            "peak_rss": max(run["peak_rss"], run.get("peak_rss_children", 0)),
            "wall": run["wall"], "carried": report["carried"],
            "verdict": report["verdict"], "tokens_match": verification.get("tokens_match"),
            "logit_rel_error": (verification.get("logits") or {}).get("relative_error"),
            "tokens_same": _same(verification),
            "vs_artifact": {"tokens_match": against.get("tokens_match"),
                            "logit_rel_error": (against.get("logits") or {})
                            .get("relative_error")} if against else None,
            "chunks": [{"file": c["file"], "bytes": c["bytes"], "layers": c["layers"]}
                       for c in report.get("chunks", [])]}


def _same(verification: dict) -> str | None:
    """"k of n": how many greedy tokens the runtime shared with the reference."""
    ours, theirs = verification.get("runtime_tokens"), verification.get("pytorch_tokens")
    if not ours or not theirs:
        return None
    return f"{sum(a == b for a, b in zip(ours, theirs, strict=False))} of {len(theirs)}"


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
        "1.5 GB of float32 weights), its 4-bit linears as int4 blockwise FCs with dynamic "
        "int8 inputs, one FC per ~128-input slice with outlier input channels split off "
        "(export.litert.int8_outliers), written and verified (the chunks run in sequence in "
        "a child process; the reference is PyTorch with the file's weights in float "
        "compute, rtol 0.1, tokens teacher-forced with near ties allowed as for ONNX's int8 "
        "compute; the artifact as stored is compared too; its write-only figures are in "
        "the llm-decode section). Peak RSS is the "
        "process's ru_maxrss, or its verifying child's when larger. Other jobs shared the 2 "
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
            differ = ("same up to near ties" if row["verdict"].startswith("passed")
                      else "differ")
            verified = (f"{row['verdict']}: tokens "
                        f"{'same' if row['tokens_match'] else differ}"
                        f"{'' if row['tokens_match'] else ' (' + str(row.get('tokens_same')) + ')'}"
                        f", logits rel. error {row['logit_rel_error']:.1e}")
            against = row.get("vs_artifact")
            if against:
                verified += (f"; vs the artifact: tokens "
                             f"{'same' if against['tokens_match'] else 'differ'}, logits "
                             f"{against['logit_rel_error']:.1e}")
        chunks = row.get("chunks") or []
        if chunks:
            carried += "; chunks GB: " + ", ".join(gb(c["bytes"]) for c in chunks)
        lines.append(head + f"{gb(row['file_bytes'])} | {carried} | "
                     f"{'write + verify' if row['verify'] else 'write only'} | "
                     f"**{gb(row['peak_rss'])}** | {row['wall']:.0f} | {verified} |")
    return lines
