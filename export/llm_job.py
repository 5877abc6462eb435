"""The LLM half of every export target: write the re-authored decoder with the artifact's
packed weights (the target's write_llm), say what was carried, dropped and lost, then
verify (the target's verify_llm): logits within rtol of PyTorch's and the same greedy
tokens, or structural checks where the runtime cannot run here (Core ML off macOS)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from export.carried import lost_quantization, lost_sparsity, pruned_sparsity, read_manifest
from export.errors import ExportError
from export.llm.streamed import StreamedArtifact
from export.lora_carry import lora_plan, model_as_written, note_lora
from export.options import ExportOptions
from export.report import ExportReport
from export.sizes import written_bytes


def export_llm_artifact(exporter, artifact: Any, out: Path,
                        options: ExportOptions) -> ExportReport:
    if artifact.tokenizer is None:
        raise ExportError(f"{artifact.source} is neither a language model nor a registered "
                          "vision family: see `toolkit models --all`")
    if options.int8:
        raise ExportError("--int8 is static int8 for vision models; an LLM's int8 weights "
                          "come from `toolkit compress --method rtn --bits 8`")
    if options.fp16 or options.palettize_bits:
        raise ExportError("--fp16 and --palettize-bits are for vision models; an LLM's Core ML "
                          "file is float16 already and carries the artifact's own palettes "
                          "(`toolkit compress --method palettize`)")
    if isinstance(artifact, StreamedArtifact) and not exporter.streams:
        raise ExportError(f"the {exporter.target} exporter converts the whole model in memory, "
                          f"which {artifact.source} does not fit: export it to onnx (written "
                          "one weight at a time), or pass --engine memory if it fits")
    if options.embedding_bits and not exporter.quantizes_tables:
        raise ExportError(f"--embedding-bits is not carried by the {exporter.target} exporter "
                          "yet (onnx carries it): export without it")
    prompt = _prompt_ids(artifact, options)
    lora = lora_plan(exporter, artifact)
    with model_as_written(lora, artifact):  # adapters a target drops: off for both steps
        result = exporter.write_llm(artifact, out, options)
        report = describe_llm(exporter, artifact, result, out, options)
        note_lora(lora, report)
        if options.require_carried and report.lost:  # refused before the verification run
            raise report.lost_error()
        if options.verify:
            report.verification = verify_llm(exporter, artifact, result, out, prompt, options)
    return report


def _prompt_ids(artifact: Any, options: ExportOptions) -> list[int]:
    """The verification prompt's tokens, refused before any work when they cannot fit."""
    if not options.verify:
        return []
    prompt = artifact.tokenizer(options.prompt, add_special_tokens=False)["input_ids"]
    if not prompt:
        raise ExportError("--prompt encodes to no tokens: give some text")
    if len(prompt) + options.new_tokens > options.max_context:
        raise ExportError(f"--prompt ({len(prompt)} tokens) + --new-tokens "
                          f"{options.new_tokens} exceed --max-context {options.max_context}: "
                          "shorten them or raise --max-context")
    return prompt


def describe_llm(exporter, artifact: Any, result: Any, out: Path,
                 options: ExportOptions) -> ExportReport:
    manifest = options.manifest if options.manifest is not None else read_manifest(
        artifact.source)
    params = (result.decoder.parameter_count() if isinstance(artifact, StreamedArtifact)
              else sum(p.numel() for p in artifact.module.parameters()))
    dropped = [{"layer": r.name, "why": r.carried_as} for r in result.dropped]
    sparsity = pruned_sparsity(manifest)
    sparse_lost = lost_sparsity(sparsity, result.carried)
    if sparse_lost:
        dropped.append({"layer": "pruned linears", "why": f"{sparsity:.1%} zeros stored "
                        f"dense: {exporter.sparse_note}"})
    size = written_bytes(out)
    quant_lost = lost_quantization(artifact.quantized, result.carried, size, artifact.source)
    return ExportReport(
        target=exporter.target, runtime=exporter.runtime, source=artifact.source,
        file_bytes=size, float32_bytes=4 * params,
        carried=dict(Counter(r.carried_as for r in result.carried)), dropped=dropped,
        lost=[what for what in (quant_lost, sparse_lost) if what],
        details={"max_context": result.decoder.shape.max_context,
                 "carried_layers": len(result.carried), "pruned_sparsity": sparsity,
                 **getattr(result, "extra_details", {})})  # e.g. LiteRT's mapped palettes


def verify_llm(exporter, artifact: Any, result: Any, out: Path, prompt: list[int],
               options: ExportOptions) -> dict:
    try:
        check = exporter.verify_llm(result, out, artifact, prompt, options)
    except ValueError as exc:  # the prompt does not fit the exported shapes
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"cannot verify with this prompt: {exc}") from None
    if isinstance(check, dict):  # structural checks only (the runtime cannot run here)
        return check
    data = check.to_dict()
    rtol = check.rtol if check.rtol is not None and not options.rtol_given else options.rtol
    data["rtol"] = rtol
    data["passed"] = check.tokens_agree and check.logits.relative_error <= rtol
    data["pytorch_text"] = artifact.tokenizer.decode(check.pytorch_tokens)
    data["runtime_text"] = artifact.tokenizer.decode(check.runtime_tokens)
    return data
