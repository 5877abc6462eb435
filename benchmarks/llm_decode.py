"""Decode of exported SmolLM2-135M files against the memory-bandwidth bound, PyTorch eager
and llama.cpp, with 1 and 2 threads.

    python -m benchmarks.llm_decode [--work DIR] [--threads 1 2] [--runs 30]
        [--min-seconds 5] [--max-context 512]

Decode of a small LLM is bound by memory bandwidth: every token reads every weight once
(and, in these files, the whole key/value cache). Per thread count, in one run:

1. this machine's read bandwidth (benchmarks/memory_bandwidth.py), before and after, and
   at each row's own bytes per token (a working set that partly stays in the host's
   shared last-level cache reads faster than DRAM);
2. one interleaved `toolkit bench` over every file and PyTorch eager fp32 (so the ratios
   hold on a shared machine): load time, time to first token of a 64-token prompt,
   prefill and decode tokens/s, peak RSS, prompt-logit error against the artifact;
3. llama.cpp (llama-cpp-python, benchmarks/llamacpp_anchor.py) on the Q4_1 GGUF the
   default model ships as, with the same 64 prompt token ids and the same threads.

Each file's bound is bytes read per decode token / bandwidth. Bytes per token: every
initializer of the file except an embedding table that only a Gather reads (one row per
token; a tied float head reads it whole, so then it counts; for LiteRT, whose tensors are
not parsed here, the whole file less a quantized table that only the lookup reads, and
the whole max-context cache, which each LiteRT step takes in and gives back:
benchmarks/litert_bytes.py); for ONNX, plus the key/value cache rows the step reads: with the
fused attention (per-layer cache, GroupQueryAttention) the rows up to the current position
(2 x layers x kv heads x (prompt + 1) x head dim x 4 bytes, 2 for a float16 cache, 1 for
an int8 one, whose per-channel scales are initializers and counted with them); the
standard-ops graph reads its whole max-context cache at every step. For llama.cpp: the
GGUF's bytes (its head is the tied table; its fp16 cache rows are left out). For PyTorch:
4 bytes per parameter.

The files, each written and verified by `toolkit export` (greedy tokens equal to
PyTorch's): the dense model (fp32); GPTQ 4-bit g64 with the standard-ops attention and
stacked cache, float compute and a 4-bit table/head (last release's best layout); the
fused attention (`--onnx-attention auto`, the default) with a float table, then a 4-bit
table, at float compute (`--accuracy-level 0`); int8 compute (the default `auto` level,
which keeps MatMulNBits' int8 kernels only when the verified tokens stay PyTorch's, on
every weight or else on the 8-bit ones alone: export.onnx.accuracy_choice) with
8- and 4-bit tables; the last with a float16 cache and with an int8 cache (static
per-channel scales measured on calibration text); LiteRT's 4-bit file with a float and
with a 4-bit table (weight-only DEQUANTIZE: float compute), and its int4-FC form
(`--chunks 1`: the block linears and the 4-bit head as int4 blockwise FCs with dynamic
int8 inputs, export.litert.chunked, the form LiteRT runs without a float copy). The compute
column reads the MatMulNBits accuracy level back from each file. `--large afm-3b` adds the
~3B rows: a synthetic checkpoint of that shape, RTN 4-bit, exported with the table and
head at 4 bits, benchmarked the same way (random weights: speed and memory only);
`--large-targets onnx,tflite` adds LiteRT's chunked export of the same artifact
(benchmarks/llm_decode_large.py), and `--large-only` runs just the ~3B rows, merged into
the existing results file (the SmolLM2 rows are kept as they were).
Results: benchmarks/results/llm_decode.json and the `llm-decode` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import environment  # noqa: E402
from benchmarks.litert_bytes import litert_bytes_per_token  # noqa: E402
from benchmarks.llm_decode_report import EAGER, LLAMACPP, PROMPT_TOKENS, markdown  # noqa: E402
from benchmarks.markdown_section import replace_section  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "llm_decode.json"
SECTION = "llm-decode"
MODEL = "smollm2-135m"
TABLE_NAME = "model.embed_tokens.weight"
ARTIFACT_FLAGS = ["--method", "gptq", "--bits", "4", "--group-size", "64"]
# name -> (source: "dense" or "gptq4", target, export flags, verified by the export)
# float compute; the default `auto` level (int8 compute if the verified tokens hold, else
# float: the table's "level" shows which the file got)
F0, I8 = ["--accuracy-level", "0"], []
T4, T8 = ["--embedding-bits", "4"], ["--embedding-bits", "8"]
FLOAT_TABLE = "gptq4, fused, float compute, float table.onnx"
FILES = {
    "dense fp32, fused.onnx": ("dense", "onnx", F0, True),
    "gptq4, standard ops, float compute, 4-bit table.onnx": (
        "gptq4", "onnx", ["--onnx-attention", "standard", *F0, *T4], True),
    FLOAT_TABLE: ("gptq4", "onnx", F0, True),
    "gptq4, fused, float compute, 4-bit table.onnx": ("gptq4", "onnx", [*F0, *T4], True),
    "gptq4, fused, auto level, 8-bit table.onnx": ("gptq4", "onnx", [*I8, *T8], True),
    "gptq4, fused, auto level, 4-bit table.onnx": ("gptq4", "onnx", [*I8, *T4], True),
    "gptq4, fused, auto level, 4-bit table, fp16 cache.onnx": (
        "gptq4", "onnx", [*I8, *T4, "--kv-cache", "float16"], True),
    "gptq4, fused, auto level, 4-bit table, int8 cache.onnx": (
        "gptq4", "onnx", [*I8, *T4, "--kv-cache", "int8"], True),
    "gptq4.tflite": ("gptq4", "tflite", ["--prefill-tokens", "64"], True),
    "gptq4, 4-bit table.tflite": ("gptq4", "tflite", ["--prefill-tokens", "64", *T4], True),
    "gptq4, int4 FCs, 4-bit table.tflite (--chunks 1)": (
        "gptq4", "tflite", ["--prefill-tokens", "64", "--chunks", "1", *T4], True),
}


def toolkit(*argv: str) -> subprocess.CompletedProcess:
    child = subprocess.run([sys.executable, "-m", "toolkit", *argv], cwd=REPO,
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"toolkit {' '.join(argv[:3])} failed: {child.stderr[-2000:]}")
    return child


def build(work: Path, max_context: int) -> dict[str, dict]:
    """The artifact and every file (skipped when already there), with the export reports."""
    artifact = work / "gptq4"
    if not artifact.exists():
        toolkit("compress", "--model", MODEL, *ARTIFACT_FLAGS, "--out", str(artifact),
                "--no-eval", "--quiet")
    sources = {"dense": MODEL, "gptq4": str(artifact)}
    made = {}
    for index, (name, (source, target, flags, verified)) in enumerate(FILES.items()):
        suffix = ".onnx" if target == "onnx" else ".tflite"
        out, report = work / f"file{index}{suffix}", work / f"file{index}.json"
        if not report.exists():
            verify = [] if verified else ["--no-verify"]
            toolkit("export", target, "--model", sources[source], "--out", str(out),
                    "--max-context", str(max_context), "--overwrite", "--json", str(report),
                    "--quiet", *flags, *verify)
        made[name] = {"path": str(out), "source": sources[source], "target": target,
                      "export": json.loads(report.read_text())}
    return made


def onnx_bytes_per_token(path: Path) -> dict:
    """Initializer bytes a decode step reads (module docstring) and the cache bytes."""
    import onnx

    from export.onnx.weights import matmul_nbits_bits

    model = onnx.load(str(path), load_external_data=False)
    sizes = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            sizes[tensor.name] = int({e.key: e.value for e in tensor.external_data}["length"])
        else:
            sizes[tensor.name] = len(tensor.raw_data) or tensor.ByteSize()
    gathered_only = set()
    for node in model.graph.node:
        if node.op_type in ("Gather", "GatherBlockQuantized") and node.input[0] in sizes:
            table = node.input[0]
            if not any(table in other.input for other in model.graph.node
                       if other is not node):
                gathered_only.update(i for i in node.input if i in sizes and i != node.input[1])
    meta = _llm_metadata(model)
    layers, kv_heads, context, head_dim = meta["cache_shape"]
    element = {"float16": 2, "int8": 1}.get(meta.get("cache_dtype"), 4)
    row = 2 * layers * kv_heads * head_dim * element
    # A per-layer cache is read up to the current position (GroupQueryAttention); the
    # stacked graph reads (and copies) every row of its cache at every step.
    rows = min(PROMPT_TOKENS + 1, context) if meta.get("cache_layout") == "per_layer" \
        else context
    weights = sum(size for name, size in sizes.items() if name not in gathered_only)
    by_bits: dict[str, set[int]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)
            by_bits.setdefault(str(matmul_nbits_bits(node)), set()).add(level)
    levels = sorted(set().union(*by_bits.values()))
    return {"weights": weights, "cache": row * rows, "total": weights + row * rows,
            "accuracy_levels": levels,
            "accuracy_levels_by_bits": {b: sorted(v) for b, v in sorted(by_bits.items())}}


def _llm_metadata(model) -> dict:
    """The contract the exporter stored in the file (export.onnx.cache_io.io_description)."""
    from export.onnx.cache_io import LLM_METADATA_KEY

    return json.loads({p.key: p.value for p in model.metadata_props}[LLM_METADATA_KEY])


def verify_tokens(made: dict) -> None:
    """Greedy tokens of the unverified files against the verified file they differ from
    in one setting only (its tokens are PyTorch's)."""
    from export.llm.greedy import greedy_tokens
    from export.onnx.verify_llm import onnx_step

    for entry in made.values():
        verification = entry["export"].get("verification")
        if verification:
            entry["tokens_match"] = verification["tokens_match"]
            if verification.get("tokens_agree") and not verification["tokens_match"]:
                entry["near_ties"] = len(verification["teacher_forced"]["near_ties"])
            continue
        twin = made["gptq4, fused, float compute, 4-bit table.onnx"]["export"]["verification"]
        import onnx

        from export.options import DEFAULT_PROMPT
        from models.lazy.open import open_lazy

        prompt = open_lazy(MODEL).tokenizer()(DEFAULT_PROMPT,
                                               add_special_tokens=False)["input_ids"]
        meta = _llm_metadata(onnx.load(entry["path"], load_external_data=False))
        tokens, _ = greedy_tokens(onnx_step(Path(entry["path"])), prompt,
                                  len(twin["runtime_tokens"]), meta["cache_shape"],
                                  meta["max_context"])
        entry["tokens_match"] = tokens == twin["pytorch_tokens"]


def bench(made: dict, threads: int, args, work: Path) -> dict:
    report = work / f"bench-{threads}.json"
    paths = [entry["path"] for entry in made.values()]
    toolkit("bench", *paths, MODEL, "--threads", str(threads), "--runs", str(args.runs),
            "--min-seconds", str(args.min_seconds), "--prompt-tokens", str(PROMPT_TOKENS),
            "--max-context", str(args.max_context), "--reference",
            made[FLOAT_TABLE]["source"], "--json", str(report),
            "--quiet")
    return json.loads(report.read_text())


def table_quality(artifact: Path) -> list[dict]:
    """What --embedding-bits costs: perplexity of the GPTQ artifact (the toolkit's default
    evaluation protocol, both held-out streams) with its float table and head, and with
    them round-to-nearest at 8 and 4 bits in groups of 32 (the export's own quantizer and
    dequantized values, swapped into the PyTorch model)."""
    from compress.quant.rtn import rtn_quantize
    from export.llm.decoder_weights import ModuleDecoderWeights
    from models import load_model
    from toolkit.data import cached_streams
    from toolkit.eval.protocol import EvalProtocol, evaluate_perplexities

    loaded = load_model(str(artifact))
    streams = cached_streams(loaded.tokenizer)
    rows = []
    for bits in (None, 8, 4):
        weights = ModuleDecoderWeights(loaded.module, 512, loaded.quantized)
        tables = None
        if bits:
            tables = weights.quantize_tables(
                lambda w, b=bits: rtn_quantize(w, b, 32, symmetric=False))
        context = tables.swapped_into(loaded.module) if tables else _nothing()
        with context:
            results = evaluate_perplexities(loaded.module, streams, EvalProtocol())
        rows.append({"table_bits": bits, **{name: r.ppl for name, r in results.items()}})
    return rows


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def large_rows(args, work: Path) -> dict:
    """A ~3B shape end to end: the synthetic bf16 checkpoint (`toolkit synth`, random
    weights: speed and memory only), RTN 4-bit (streaming), ONNX with the table and head at
    4 bits (streaming export), then one `toolkit bench` per thread count and the bound."""
    from benchmarks.llm_scale import measured, synthesize
    from benchmarks.memory_bandwidth import read_bandwidth
    from models.large_shapes import shape_named

    spec = shape_named(args.large)
    source = synthesize(args.large, None, work)
    group = 64 if all(n % 64 == 0 for n in (spec.hidden, spec.intermediate)) else 32
    artifact, out = work / f"{args.large}-rtn4", work / f"{args.large}-rtn4.onnx"
    if not artifact.exists():
        toolkit("compress", "--model", str(source), "--method", "rtn", "--bits", "4",
                "--group-size", str(group), "--out", str(artifact), "--engine", "streaming",
                "--no-eval", "--quiet")
    tflite = None
    if "tflite" in args.large_targets:
        from benchmarks.llm_decode_large import large_tflite_rows

        tflite = large_tflite_rows(args, work, artifact, spec)
    if "onnx" not in args.large_targets:
        return {"tflite": tflite}
    export = measured(["export", "onnx", "--model", str(artifact), "--engine", "streaming",
                       "--out", str(out), "--overwrite", "--max-context",
                       str(args.max_context), "--embedding-bits", "4", "--new-tokens", "4",
                       "--quiet"], work)
    result = {"shape": args.large, "params": spec.param_count(), "group_size": group,
              "export_peak_rss": export["peak_rss"], "export_wall": export["wall"],
              "verdict": export["report"]["verdict"],
              "bytes_per_token": onnx_bytes_per_token(out), "threads": {}, "tflite": tflite}
    for threads in args.threads:
        before = read_bandwidth(threads)
        report = work / f"bench-large-{threads}.json"
        toolkit("bench", str(out), "--threads", str(threads), "--runs", "5",
                "--min-seconds", "2", "--warmup", "1", "--prompt-tokens", str(PROMPT_TOKENS),
                "--json", str(report), "--quiet")
        result["threads"][str(threads)] = {"bandwidth": [before, read_bandwidth(threads)],
                                           "bench": json.loads(report.read_text())}
    return result


def run(args) -> dict:
    from benchmarks.llamacpp_anchor import default_gguf, ensure_env, run_anchor
    from benchmarks.memory_bandwidth import read_bandwidth
    from models.lazy.open import open_lazy

    work = _work_folder(args)
    made = build(work, args.max_context)
    verify_tokens(made)
    quality = table_quality(work / "gptq4")
    lazy = open_lazy(MODEL)
    infos = lazy.source.infos()
    lazy.source.close()
    dense_bytes = 4 * sum(_numel(i.shape) for i in infos.values())
    for entry in made.values():
        entry["bytes_per_token"] = (
            onnx_bytes_per_token(Path(entry["path"])) if entry["target"] == "onnx"
            else litert_bytes_per_token(Path(entry["path"]), entry["export"]["carried"],
                                        tuple(infos[TABLE_NAME].shape)))
    ensure_env()
    gguf = default_gguf()
    rows = {}
    # The bytes each row reads per token, for the bound at that working set (a small
    # model's weights stay partly in the host's shared last-level cache between tokens).
    working_sets = {name: entry["bytes_per_token"]["total"] for name, entry in made.items()}
    working_sets.update({EAGER: dense_bytes, LLAMACPP: gguf.stat().st_size})
    rows = {}
    for threads in args.threads:
        before = read_bandwidth(threads)
        at_size = {name: read_bandwidth(threads, nbytes=size)["gb_per_s"]
                   for name, size in working_sets.items()}
        measured = bench(made, threads, args, work)
        anchor = run_anchor(gguf, prompt_tokens=PROMPT_TOKENS, new_tokens=args.anchor_tokens,
                            threads=threads)
        after = read_bandwidth(threads)
        anchor["gguf"] = gguf.name  # no machine paths in the results
        rows[str(threads)] = {"bandwidth": [before, after], "bench": measured,
                              "llamacpp": anchor, "working_set_gb_per_s": at_size}
    large = large_rows(args, work) if args.large else None
    files = {name: {k: v for k, v in entry.items() if k != "path"}
             for name, entry in made.items()}
    for name, entry in made.items():
        files[name]["file"] = Path(entry["path"]).name
    rows, files, large = (_relative(part, work) for part in (rows, files, large))
    return {"environment": environment(), "files": files, "threads": rows,
            "gguf": {"name": gguf.name, "bytes": gguf.stat().st_size},
            "pytorch_fp32_bytes": dense_bytes, "large": large, "table_quality": quality,
            "args": {"runs": args.runs, "min_seconds": args.min_seconds,
                     "max_context": args.max_context, "prompt_tokens": PROMPT_TOKENS}}


def _merge_large(data: dict, args) -> dict:
    """`data` with the large rows of args.large_targets run now in place of the old ones
    (an ONNX part not re-run is kept)."""
    work = _work_folder(args)
    large = _relative(large_rows(args, work), work)
    old = data.get("large") or {}
    if "onnx" in args.large_targets:
        old = {**large, "tflite": large.get("tflite") or old.get("tflite")}
    else:
        old["tflite"] = large["tflite"]
    data["large"] = old
    data.setdefault("large_runs", []).append({"date": environment()["date"],
                                              "targets": args.large_targets})
    return data


def _work_folder(args) -> Path:
    """--work (or a new temporary folder), absolute: the tools it runs record absolute
    paths, which _relative strips."""
    work = (args.work or Path(tempfile.mkdtemp(prefix="llm-decode-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    return work


def _relative(value, work: Path):
    """`value` with the work folder's paths made relative to it (no machine paths)."""
    if isinstance(value, dict):
        return {k: _relative(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, work) for v in value]
    if isinstance(value, str):
        return value.replace(f"{work}/", "")
    return value


def _numel(shape) -> int:
    total = 1
    for n in shape:
        total *= n
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, help="folder for the artifact and files (kept)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--min-seconds", type=float, default=5.0)
    p.add_argument("--max-context", type=int, default=512)
    p.add_argument("--anchor-tokens", type=int, default=64)
    p.add_argument("--large", default="afm-3b",
                   help="large shape for the 3B rows ('' to skip them and keep the "
                        "results file's), from `toolkit models`")
    p.add_argument("--large-targets", default="onnx",
                   help="comma-separated targets of the large rows: onnx, tflite "
                        "(default: %(default)s)")
    p.add_argument("--large-only", action="store_true",
                   help="run only the large rows and merge them into --results")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--from-results", action="store_true",
                   help="only rewrite the BENCHMARKS.md section from --results")
    args = p.parse_args(argv)
    args.large_targets = [t for t in args.large_targets.split(",") if t]
    if args.from_results:
        data = json.loads(args.results.read_text())
    elif args.large_only:
        data = _merge_large(json.loads(args.results.read_text()), args)
        args.results.write_text(json.dumps(data, indent=1) + "\n")
    else:
        data = run(args)
        if not args.large and args.results.exists():  # --large '': the 3B rows are kept
            previous = json.loads(args.results.read_text())
            for key in ("large", "large_runs"):
                if previous.get(key):
                    data[key] = previous[key]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(data, indent=1) + "\n")
    replace_section(args.markdown, SECTION, markdown(data))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
