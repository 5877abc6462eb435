"""The ~3B LiteRT rows of benchmarks/llm_decode.py (`--large-targets tflite`): the RTN
4-bit artifact of the synthetic shape exported by `toolkit export tflite --engine
streaming --embedding-bits 4` (chunks of layers converted one at a time, 4-bit linears
and the head as int4 blockwise FCs, the table a lookup over its int4 codes:
export.litert.chunked; the ONNX rows quantize the table and head the same way), written
without verification (`--no-verify`, so the peak RSS
is the exporter's own; the llm-scale table records the verified run), then one `toolkit
bench` of the chunks in sequence per thread count, beside the ONNX rows of the same
artifact.

Bytes read per decode token, for the bound: every chunk file's bytes except the first
chunk's embedding table (its int4 codes and float32 scales and zero points per group of
32, export.litert.gather: the lookup reads one row per token; the head in the last chunk
holds its own codes and is read whole, so it counts), plus the whole key/value cache,
which every LiteRT step takes in and gives back.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.litert_bytes import EMBEDDING_BITS, gathered_table_bytes

PROMPT_TOKENS = 64


def large_tflite_rows(args, work: Path, artifact: Path, spec) -> dict:
    from benchmarks.llm_decode import toolkit
    from benchmarks.llm_scale import measured
    from benchmarks.memory_bandwidth import read_bandwidth

    out = work / f"{args.large}-rtn4.tflite"
    export = measured(["export", "tflite", "--model", str(artifact), "--engine", "streaming",
                       "--out", str(out), "--overwrite", "--max-context",
                       str(args.max_context), "--embedding-bits", str(EMBEDDING_BITS),
                       "--no-verify", "--quiet"], work)
    report = export["report"]
    chunks = report.get("chunks") or [{"file": out.name, "bytes": report["file_bytes"]}]
    table = gathered_table_bytes(spec.vocab, spec.hidden)
    cache = 2 * spec.layers * spec.kv_heads * args.max_context * spec.attention_head_dim * 4
    weights = report["file_bytes"] - table
    verification = report.get("verification") or {}
    result = {"shape": args.large, "params": spec.param_count(),
              "embedding_bits": EMBEDDING_BITS,
              "export_peak_rss": export["peak_rss"], "export_wall": export["wall"],
              "verdict": report["verdict"], "carried": report["carried"],
              "tokens_match": verification.get("tokens_match"),
              "logit_rel_error": (verification.get("logits") or {}).get("relative_error"),
              "vs_artifact": verification.get("vs_artifact"),
              "chunks": [{"file": c["file"], "bytes": c["bytes"]} for c in chunks],
              "bf16_scale_loss_max": (report.get("bf16_scale_loss") or {}).get("max"),
              "bytes_per_token": {"weights": weights, "cache": cache,
                                  "total": weights + cache}, "threads": {}}
    first = out.parent / chunks[0]["file"]
    for threads in args.threads:
        before = read_bandwidth(threads)
        bench = work / f"bench-large-tflite-{threads}.json"
        toolkit("bench", str(first), "--threads", str(threads), "--runs", "5",
                "--min-seconds", "2", "--warmup", "1", "--prompt-tokens", str(PROMPT_TOKENS),
                "--json", str(bench), "--quiet")
        result["threads"][str(threads)] = {"bandwidth": [before, read_bandwidth(threads)],
                                           "bench": json.loads(bench.read_text())}
    return result
