"""The `llm-decode` section of BENCHMARKS.md from benchmarks/llm_decode.py's results: one
table per thread count (each file against the DRAM bound and the bound at its own
working set, PyTorch eager and llama.cpp), the quality cost of table quantization, and
the ~3B rows. Rendering only: every number comes from the results file.
"""

from __future__ import annotations

PROMPT_TOKENS = 64
EAGER, LLAMACPP = "PyTorch eager fp32 (dense)", "llama.cpp Q4_1 GGUF"


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [
        "## Exported LLM decode against the memory-bandwidth bound",
        "",
        f"`python -m benchmarks.llm_decode` on {env['cpu']} ({env['cores']} cores), "
        f"{env['date']}. SmolLM2-135M-Instruct; every file verified by `toolkit export` "
        "(greedy tokens equal to PyTorch's) unless marked. One interleaved `toolkit bench` "
        f"per thread count ({data['args']['runs']}+ timed decode steps, median), prompt "
        f"{data['args']['prompt_tokens']} tokens, max context {data['args']['max_context']}. "
        "Bound: bytes read per decode token / measured read bandwidth (module docstring); "
        "% of bound = bound time / measured time, against the DRAM bandwidth (1 GiB probe) "
        "and against the bandwidth measured at the row's own bytes per token (a SmolLM2 "
        "file fits in part in the host's shared last-level cache, which reads faster: over "
        "100% of the DRAM bound means exactly that). TTFT: the 64-token prefill. "
        "Tokens = PyTorch: the export's verification (greedy tokens of the file equal "
        "PyTorch's computing with the same weights, the quantized table included; `yes, N "
        "near tie`: a file computing in int8 took the other token where PyTorch's two best "
        "were within 0.1 in logit, and PyTorch fed the file's own continuation chose as it "
        "did everywhere else). Logit "
        "rel. error: the bench prompt's logits against the GPTQ artifact in PyTorch with "
        "its float table, so the dense rows show GPTQ's own change and the table rows the "
        "table's quantization. llama.cpp: llama-cpp-python on the shipped Q4_1 GGUF, same "
        "prompt ids. Why the int8-compute file stops near 60% of the DRAM bound: the "
        "`decode-profile` section (benchmarks/decode_profile.py) and the int4 kernel's own "
        "rate per layer shape, `matmul-nbits-rate` (benchmarks/matmul_nbits_rate.py), "
        "and in every block size with and without zero points, `matmul-nbits-layouts` "
        "(benchmarks/matmul_nbits_layouts.py).",
    ]
    for threads, row in data["threads"].items():
        bandwidth = row["bandwidth"][0]["gb_per_s"], row["bandwidth"][1]["gb_per_s"]
        gb_s = min(bandwidth)
        lines += ["", f"**{threads} thread(s)**: read bandwidth {bandwidth[0]:.1f} GB/s "
                  f"before, {bandwidth[1]:.1f} after (the bound uses the lower).", "",
                  "| file | MB | MB read / token | bound tok/s | load ms | TTFT ms | "
                  "prefill tok/s | decode tok/s (p90 step) | x PyTorch | "
                  "% of bound (DRAM / at size) | RSS MB | tokens = PyTorch | logit rel. error |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        models = {m["path"]: m for m in row["bench"]["models"]}
        eager = next(m for m in row["bench"]["models"] if m["runtime"] == "torch")
        eager_tps = eager["llm"]["decode_tokens_per_s"]
        at_size = row.get("working_set_gb_per_s", {})
        for name, entry in data["files"].items():
            model = next(m for path, m in models.items() if path.endswith(entry["file"]))
            label = f"{name} ({level_label(entry.get('bytes_per_token', {}))})" \
                if entry.get("bytes_per_token", {}).get("accuracy_levels") else name
            lines.append(_row(label, model, entry.get("bytes_per_token", {}).get("total"),
                              gb_s, eager_tps, _tokens(entry), at_size.get(name)))
        lines.append(_row(EAGER, eager, None, gb_s, eager_tps, True, at_size.get(EAGER),
                          params_bytes=data["pytorch_fp32_bytes"]))
        anchor = row["llamacpp"]
        lines.append(_anchor_row(anchor, data["gguf"]["bytes"], gb_s, eager_tps,
                                 at_size.get(LLAMACPP)))
    return "\n".join(lines + _quality_lines(data.get("table_quality"))
                     + _large_lines(data.get("large")))


def _quality_lines(rows: list[dict] | None) -> list[str]:
    if not rows:
        return []
    lines = ["", "What `--embedding-bits` costs in quality: perplexity of the GPTQ 4-bit "
             "artifact with its table and head as stored (float) and round-to-nearest at 8 "
             "and 4 bits, groups of 32 (the toolkit's default evaluation protocol).", "",
             "| table and head | Wikipedia ppl | news ppl |", "|---|---|---|"]
    for row in rows:
        name = "float (as stored)" if row["table_bits"] is None else f"{row['table_bits']}-bit"
        lines.append(f"| {name} | {row['wikipedia']:.3f} | {row['news']:.3f} |")
    return lines


def _large_lines(large: dict | None) -> list[str]:
    if not large:
        return []
    if "bytes_per_token" not in large:  # only LiteRT's rows were run
        return _large_tflite_lines(large.get("tflite"))
    per_token = large["bytes_per_token"]["total"]
    lines = ["", f"{large['shape']} ({large['params'] / 1e9:.2f}B parameters, synthetic "
             f"random weights: speed and memory only): RTN 4-bit g{large['group_size']} "
             "artifact exported with `--engine streaming --embedding-bits 4` (export peak "
             f"RSS {large['export_peak_rss'] / 1e9:.2f} GB with verification, "
             f"{large['export_wall']:.0f} s, verdict {large['verdict']}; MatMulNBits level "
             f"{'/'.join(map(str, large['bytes_per_token'].get('accuracy_levels') or ['-']))}: "
             "the default `auto` keeps int8 compute only when the verified greedy tokens "
             "stay PyTorch's; level 0 means they changed on these random weights, so the "
             "file computes in float); "
             "one `toolkit bench` per thread count (5+ decode steps).", "",
             "| threads | GB | GB read / token | bandwidth GB/s | bound tok/s | load s | "
             "TTFT s | prefill tok/s | decode tok/s | % of bound | RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    return (lines + _large_rows(large["threads"], per_token)
            + _large_tflite_lines(large.get("tflite")))


def level_label(per_token: dict) -> str:
    """"level 4", or per weight width where the widths differ ("level 4 on 8-bit, 0 on
    4-bit": export.onnx.accuracy_choice's middle step)."""
    levels = per_token["accuracy_levels"]
    by_bits = per_token.get("accuracy_levels_by_bits") or {}
    if len(levels) > 1 and by_bits:
        return "level " + ", ".join(f"{'/'.join(map(str, lv))} on {bits}-bit"
                                    for bits, lv in sorted(by_bits.items(),
                                                           key=lambda kv: -int(kv[0])))
    return f"level {'/'.join(map(str, levels))}"


def _large_tflite_lines(tflite: dict | None) -> list[str]:
    """The same artifact exported to LiteRT in chunks (benchmarks/llm_decode_large.py)."""
    if not tflite:
        return []
    per_token = tflite["bytes_per_token"]["total"]
    sizes = ", ".join(f"{c['bytes'] / 1e9:.2f}" for c in tflite["chunks"])
    bits = tflite.get("embedding_bits")
    tables = (f"--embedding-bits {bits} " if bits else "")
    quantized = (f"table a lookup over its int{bits} codes, " if bits else "float table, ")
    lines = ["", f"The same artifact exported to LiteRT: `toolkit export tflite --engine "
             f"streaming {tables}--no-verify` ({len(tflite['chunks'])} chunk files, GB: "
             f"{sizes}; {quantized}"
             f"4-bit linears{' and head' if bits == 4 else ''} as int4 blockwise FCs with "
             "dynamic int8 inputs, one FC per "
             "~128-input slice, outlier input channels split off into float FCs, block "
             "scales rounded to bf16, largest relative weight change "
             f"{tflite['bf16_scale_loss_max']:.1e}); export peak RSS "
             f"{tflite['export_peak_rss'] / 1e9:.2f} GB, {tflite['export_wall']:.0f} s, "
             "written without verification, so the peak is the exporter's own (the "
             "verified run is in the llm-scale table). Bytes "
             "per token: the chunk files without the first chunk's gathered table, plus the "
             "whole cache, which each LiteRT step takes and returns. Run with "
             "`--large-only --large-targets tflite`, after the rows above.", "",
             "| threads | GB | GB read / token | bandwidth GB/s | bound tok/s | load s | "
             "TTFT s | prefill tok/s | decode tok/s | % of bound | RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    return lines + _large_rows(tflite["threads"], per_token)


def _large_rows(by_threads: dict, per_token: float) -> list[str]:
    lines = []
    for threads, row in by_threads.items():
        gb_s = min(b["gb_per_s"] for b in row["bandwidth"])
        model = row["bench"]["models"][0]
        llm = model["llm"]
        bound = gb_s * 1e9 / per_token
        decode = llm["decode_tokens_per_s"]
        lines.append(
            f"| {threads} | {(model.get('file_bytes') or 0) / 1e9:.2f} | "
            f"{per_token / 1e9:.2f} | {gb_s:.1f} | {bound:.1f} | {model['load_seconds']:.1f} | "
            f"{PROMPT_TOKENS / llm['prefill_tokens_per_s']:.1f} | "
            f"{llm['prefill_tokens_per_s']:.1f} | **{decode:.2f}** | "
            f"{100 * decode / bound:.0f}% | {(model.get('peak_rss_mb') or 0) / 1e3:.2f} |")
    return lines


def _bound_share(decode: float, per_token: float, gb_s: float, at_size: float | None) -> str:
    """% of the DRAM bound, and of the bound at the row's own working set when measured."""
    share = f"{100 * decode * per_token / (gb_s * 1e9):.0f}%"
    if at_size:
        share += f" / {100 * decode * per_token / (at_size * 1e9):.0f}%"
    return share


def _tokens(entry: dict) -> bool | str | None:
    """The tokens column: True, False, None (not checked) or 'yes, N near tie(s)'."""
    ties = entry.get("near_ties")
    if ties:
        return f"yes, {ties} near tie{'s' if ties > 1 else ''}"
    return entry.get("tokens_match")


def _row(name, model, per_token, gb_s, eager_tps, tokens_match, at_size=None,
         params_bytes=None) -> str:
    llm = model["llm"]
    per_token = per_token or params_bytes
    bound = gb_s * 1e9 / per_token if per_token else None
    decode = llm["decode_tokens_per_s"]
    ttft = 1000 * PROMPT_TOKENS / llm["prefill_tokens_per_s"]
    accuracy = model.get("accuracy") or {}
    error = accuracy.get("relative_error")
    size = model.get("file_bytes") or per_token
    return (f"| {name} | {size / 1e6:.1f} | "
            f"{per_token / 1e6:.1f} | {bound:.0f} | {1000 * model['load_seconds']:.0f} | "
            f"{ttft:.0f} | {llm['prefill_tokens_per_s']:.0f} | **{decode:.1f}** "
            f"({1000 / model['latency']['p90_ms']:.1f}) | "
            f"{decode / eager_tps:.2f} | {_bound_share(decode, per_token, gb_s, at_size)} | "
            f"{model.get('peak_rss_mb') or 0:.0f} | "
            f"{_yes_no(tokens_match)} | "
            f"{'-' if error is None else f'{error:.1e}'} |")


def _yes_no(tokens_match) -> str:
    if isinstance(tokens_match, str):
        return tokens_match
    return "yes" if tokens_match else "no" if tokens_match is False else "-"


def _anchor_row(anchor: dict, gguf_bytes: int, gb_s: float, eager_tps: float,
                at_size: float | None = None) -> str:
    decode = anchor["decode_tokens_per_s"]["median"]
    bound = gb_s * 1e9 / gguf_bytes
    return (f"| llama.cpp Q4_1 GGUF | {gguf_bytes / 1e6:.1f} | {gguf_bytes / 1e6:.1f} | "
            f"{bound:.0f} | {1000 * anchor['load_seconds']:.0f} | "
            f"{1000 * anchor['ttft_seconds']['median']:.0f} | "
            f"{anchor['prefill_tokens_per_s']['median']:.0f} | **{decode:.1f}** "
            f"(min {anchor['decode_tokens_per_s']['min']:.1f}) | "
            f"{decode / eager_tps:.2f} | {_bound_share(decode, gguf_bytes, gb_s, at_size)} | "
            f"{anchor.get('peak_rss_bytes', 0) / 1e6:.0f} | - | - |")
