"""The language-model workflow (decoder LMs and MoE LMs): calibration windows of token ids
from the Wikipedia pool or a user's text file; perplexity on the Wikipedia and news
streams before and after; the manifest's sparsity, quantization and mixture-of-experts
fields; a Hugging Face directory as the artifact (packed weights when quantized)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import LoadedModel
from models.families.llm_weights import interop_summary
from toolkit.data import (
    cached_streams,
    read_calibration_file,
    sample_calibration,
    token_hash,
    tokenize_text,
)
from toolkit.eval import evaluate_perplexities
from toolkit.lm_artifact import block_sparsity
from toolkit.recipe import CalibrationSpec
from toolkit.report import format_table
from toolkit.workflows.base import CalibrationData, Workflow

DEFAULT_SAMPLES = 32


def calibration(loaded: LoadedModel, spec: CalibrationSpec) -> CalibrationData:
    """N windows of L tokens drawn with `spec.seed` from the Wikipedia pool or `spec.file`;
    the token streams are also what perplexity is measured on."""
    streams = cached_streams(loaded.tokenizer)
    samples = spec.samples or DEFAULT_SAMPLES
    if spec.file is not None:
        pool = tokenize_text(loaded.tokenizer, read_calibration_file(spec.file))
        source = str(spec.file)
    else:
        pool, source = streams.calib_pool, "wikipedia (gensim test data, first 90% of tokens)"
    tokens = sample_calibration(pool, samples, spec.seq_len, spec.seed)
    description = {"source": source, "samples": samples, "seq_len": spec.seq_len,
                   "seed": spec.seed, "pool_tokens": int(pool.numel()),
                   "tokens_sha256": token_hash(tokens)}
    return CalibrationData(tokens, description, held_out=streams, samples=samples)


def evaluate(loaded: LoadedModel, _original, data: CalibrationData, run) -> dict:
    results = evaluate_perplexities(loaded.module, data.held_out, run.recipe.protocol,
                                    device=run.device, progress=run.progress)
    return {name: result.to_dict() for name, result in results.items()}


def manifest_fields(loaded: LoadedModel, stages: list[dict], _data, run) -> dict[str, Any]:
    quantization = [s["report"] for s in stages if s["kind"] == "quantize"]
    # The family (llm or moe-llm) and its "moe" section come from the family registry
    # when the artifact is saved (toolkit.artifacts.save_model_artifact).
    return {"sparsity": _sparsity_section(loaded, stages),
            "quantization": quantization[-1] if quantization else None,
            "eval_protocol": run.recipe.protocol.to_dict()}


def _sparsity_section(loaded: LoadedModel, stages: list[dict]) -> dict[str, Any]:
    """Zeros counted in the final weights (so a later quantization stage is accounted for)
    over the linears a pruning stage pruned (all block linears when none did), plus the
    pruning stage's own per-block targets."""
    _, measured = block_sparsity(loaded.module)
    prune = [s["report"] for s in stages if s["kind"] == "prune"]
    names = list(prune[-1]["per_layer"]) if prune else list(measured)
    numel = {n: m.weight.numel() for n, m in loaded.module.named_modules() if n in names}
    total = sum(numel.values())
    overall = sum(measured[n] * numel[n] for n in names) / total if total else 0.0
    section: dict[str, Any] = {"overall": overall, "per_layer": {n: measured[n] for n in names}}
    if prune:
        section.update({k: prune[-1][k] for k in ("block_targets", "outlier_ratios",
                                                   "ignored")})
    return section


def summary(manifest: dict, out: Path) -> str:
    metrics, timing = manifest["metrics"], manifest["timing_seconds"]
    quant = manifest.get("quantization")
    bits = quant["bits_per_weight"] if quant else None
    lora = [s["report"] for s in manifest.get("stages", []) if s["kind"] == "lora"]
    # Adapters counted apart: "3.70 + 0.19 (LoRA r16)"; on linears that were only pruned
    # the base is their float weights' bits, e.g. "32.00 + 0.74 (LoRA r16)".
    base = bits if bits is not None or not lora else lora[-1].get("base_bits_per_weight")
    if lora and base is not None:
        bits = (f"{base:.2f} + {lora[-1]['adapter_bits_per_weight']:.2f} "
                f"(LoRA r{lora[-1]['rank']})")
    sparsity = manifest["sparsity"]["overall"]
    rows = []
    if "before" in metrics:
        m = metrics["before"]
        rows.append(["dense", m["wikipedia"]["ppl"], m["news"]["ppl"], 0.0, None])
    after = metrics.get("after")
    rows.append([manifest["method"]["method"], after["wikipedia"]["ppl"] if after else None,
                 after["news"]["ppl"] if after else None, sparsity, bits])
    protocol = manifest["eval_protocol"]
    lines = [format_table(["model", "wiki ppl", "news ppl", "sparsity", "bits/weight"], rows),
             "", f"perplexity: {protocol['windows']} windows x {protocol['seq_len']} tokens "
             "per stream; sparsity and bits over the decoder-block linears (bits include "
             "scales, zero points and lookup tables)",
             f"weights on disk: {manifest['files']['weights_bytes'] / 1e6:.1f} MB",
             f"compression: {timing['compress_total']:.1f} s (forward {timing['forward']:.1f} s, "
             f"method {timing['method']:.1f} s); total {timing.get('wall_total', 0):.1f} s",
             f"output: {out}"]
    allocation = (quant or {}).get("allocation")
    if allocation:  # mixed bit-widths: what went where
        lines.insert(-1, f"mixed bits ({allocation.get('sensitivity_kind', 'absolute')} "
                         f"sensitivity): {allocation['achieved_bits']:.3f} bits per weight "
                         f"(target {allocation['target_bits']:g}); layers per type and bits "
                         f"{allocation.get('by_type')}"
                         + (f"; embedding table and head {allocation['table_bits']}-bit"
                            if allocation.get("table_bits") else ""))
    interop = interop_summary(manifest.get("interop"))  # whether transformers loads it
    if interop:
        lines.insert(-1, interop)
    if lora:
        lines.insert(-1, f"LoRA adapters: {lora[-1]['linears']} linears, rank "
                         f"{lora[-1]['rank']}, {_lora_gain(lora[-1])}; stored in "
                         "lora_adapters.safetensors (Edge Toolkit re-attaches them, "
                         "transformers loads the base weights only)")
    return "\n".join(lines)


def _lora_gain(section: dict) -> str:
    """What the adapters bought: the held-out KL (whole-model LoRA), or the blocks' output
    error (block-wise LoRA under the streaming engine)."""
    if "kl_before" in section:
        return (f"held-out KL to the dense model {section['kl_before']:.4g} -> "
                f"{section['kl_after']:.4g}")
    blocks = section.get("blocks", [])
    before = sum(b["loss_before"] for b in blocks)
    after = sum(b["loss_after"] for b in blocks)
    return (f"block-wise: {section.get('blocks_recovered', 0)} of {len(blocks)} blocks "
            f"closer to the dense blocks, summed output MSE {before:.4g} -> {after:.4g}")


WORKFLOW = Workflow(
    name="llm", kind="language model", task="text-generation",
    compares_with_original=False, accepts=lambda loaded: loaded.tokenizer is not None,
    calibration=calibration, evaluate=evaluate, manifest_fields=manifest_fields,
    summary=summary)
