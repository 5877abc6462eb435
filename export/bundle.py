"""`write_bundle(target, artifact, bundle, options)`: an exported LLM as an app-ready
folder, everything a demo app or the device benchmark needs and nothing it must guess.

    DIR/model.onnx (+ model.onnx.data) | model.tflite   the verified file (export_model)
        | model_chunk1..N.tflite                        LiteRT chunks: export.litert_bundle_chunks
        | model.mlpackage (or model_chunk1..N)           Core ML: export.coreml_bundle_llm
        tokenizer.json, tokenizer_config.json           the fast tokenizer, as saved
        chat_template.jinja                             when the tokenizer has one
        generation_config.json                          the model's, else bos/eos/pad ids
        bundle.json                                     the manifest (export.bundle_read)

bundle.json is written last, after the sha256 of every other file; the whole folder is
built in a hidden staging sibling (models.staging) and renamed into place only when
complete, so a reader never meets a bundle without its manifest or one whose model
failed verification. With `overwrite`, an existing bundle is replaced only once the new
one is complete, and a folder that is not a bundle is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from export.bundle_files import (
    BUNDLE_FORMAT,
    BUNDLE_TARGETS,
    BUNDLE_VERSION,
    MANIFEST,
    MODEL_STEM,
    check_bundle_dir,
    files_section,
    model_files,
    sha256,
    staged_bundle,
)
from export.bundle_io import contract_summary, describe_entry_points
from export.errors import ExportError
from export.llm.streamed import StreamedArtifact
from export.options import ExportOptions
from export.registry import artifact_kind, get_exporter
from export.report import ExportReport

__all__ = ["BUNDLE_FORMAT", "BUNDLE_TARGETS", "BUNDLE_VERSION", "KIND", "MANIFEST",
           "MODEL_STEM", "bundle_manifest", "check_bundle_dir", "files_section", "sha256",
           "write_bundle"]
KIND = "llm"  # the manifest's "kind" of a language-model bundle
TOKENIZER_FILE = "tokenizer.json"
GENERATION_FILE = "generation_config.json"


def write_bundle(target: str, artifact: Any, bundle: Path,
                 options: ExportOptions | None = None) -> ExportReport:
    """Export `artifact` to `target` as a bundle at `bundle`: a decoder LM (a
    models.LoadedModel or an export.llm.streamed.StreamedArtifact) with its tokenizer, or
    a vision model (export.vision_bundle). A report whose verification failed comes back
    with path None and nothing written, as from export_model."""
    options = options or ExportOptions()
    if artifact_kind(artifact) != "llm":
        from export.vision_bundle import write_vision_bundle

        return write_vision_bundle(target, artifact, bundle, options)
    check_bundle_dir(target, bundle, options)
    if options.kv_cache_dtype == "int8":
        raise ExportError("--bundle carries a float32 or float16 cache (the demo apps and "
                          "the bundle reader allocate float caches): use --kv-cache float16 "
                          "with --bundle, or --out for an int8-cache file")
    tokenizer = _checked_tokenizer(artifact)

    def finish(staging: Path, model: Path, report: ExportReport) -> dict:
        if target == "coreml":  # packages, cache as Core ML states: export.coreml_bundle_llm
            from export.coreml_bundle_llm import coreml_llm_manifest

            return coreml_llm_manifest(staging, model, artifact, tokenizer, report, options)
        extra = write_tokenizer_files(staging, tokenizer)
        write_generation_config(staging, artifact, tokenizer)
        return bundle_manifest(target, staging, model, artifact, tokenizer, report,
                               options, extra)

    return staged_bundle(target, artifact, bundle, options, finish)


def _checked_tokenizer(artifact: Any):
    """The artifact's fast tokenizer; a one-line refusal for what cannot be bundled."""
    if getattr(artifact, "tokenizer", None) is None:
        raise ExportError(f"--bundle packages a language model with its tokenizer, or a "
                          f"vision model; {artifact.source} has no tokenizer: export it "
                          "with --out")
    tokenizer = artifact.tokenizer
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ExportError(f"the tokenizer of {artifact.source} is not a fast (tokenizers) "
                          f"one, so it has no {TOKENIZER_FILE} for apps to read: add the "
                          f"model's {TOKENIZER_FILE} to its folder")
    return tokenizer


def write_tokenizer_files(staging: Path, tokenizer) -> list[str]:
    """What the tokenizer saves (tokenizer.json, tokenizer_config.json, its chat template),
    moved from a scratch folder into `staging`; their names, tokenizer.json first."""
    scratch = staging / ".tokenizer"
    tokenizer.save_pretrained(scratch)
    if not (scratch / TOKENIZER_FILE).is_file():  # an old transformers may save only vocab
        (scratch / TOKENIZER_FILE).write_text(tokenizer.backend_tokenizer.to_str(),
                                              encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and not any(scratch.glob("chat_template.*")):
        (scratch / "chat_template.jinja").write_text(template, encoding="utf-8")
    names = []
    for entry in sorted(scratch.iterdir()):
        os.replace(entry, staging / entry.name)
        names.append(entry.name)
    scratch.rmdir()
    return sorted(names, key=lambda name: name != TOKENIZER_FILE)


def write_generation_config(staging: Path, artifact: Any, tokenizer) -> None:
    """The model's generation config (the HF directory's file for a streamed checkpoint,
    the module's otherwise, non-default fields only); else the tokenizer's special ids."""
    path = staging / GENERATION_FILE
    if isinstance(artifact, StreamedArtifact):
        source = Path(artifact.lazy.path) / GENERATION_FILE
        if source.is_file():
            shutil.copyfile(source, path)
            return
    else:
        generation = getattr(artifact.module, "generation_config", None)
        if generation is not None:
            path.write_text(generation.to_json_string(use_diff=True), encoding="utf-8")
            return
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None)
           for name in ("bos", "eos", "pad")}
    path.write_text(json.dumps({k: v for k, v in ids.items() if v is not None}, indent=2)
                    + "\n", encoding="utf-8")


def special_tokens(staging: Path, tokenizer) -> dict:
    """bos/pad/unk ids and every id that ends generation (the generation config may list
    several, e.g. Llama 3's end-of-turn tokens, beside the tokenizer's eos)."""
    generation = json.loads((staging / GENERATION_FILE).read_text(encoding="utf-8"))
    eos = generation.get("eos_token_id")
    eos_ids = list(eos) if isinstance(eos, list) else [eos]
    eos_ids.append(getattr(tokenizer, "eos_token_id", None))
    tokens = {}
    for name in ("bos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            tokens[name] = {"id": int(token_id), "text": str(getattr(tokenizer, f"{name}_token"))}
    tokens["eos_ids"] = sorted({int(i) for i in eos_ids if i is not None})
    return tokens


def bundle_manifest(target: str, staging: Path, model: Path, artifact: Any, tokenizer,
                    report: ExportReport, options: ExportOptions, extra: list[str]) -> dict:
    """bundle.json (see export.bundle_read for each key's meaning)."""
    exporter = get_exporter(target)
    files = model_files(staging, model)
    verification = None
    if report.verification is not None:
        check = report.verification
        verification = {
            "passed": bool(check.get("passed")), "runtime": check.get("runtime"),
            "prompt": options.prompt,
            "prompt_ids": [int(i) for i in tokenizer(options.prompt, add_special_tokens=False)
                           ["input_ids"]],
            "tokens": check.get("runtime_tokens"), "rtol": check.get("rtol"),
            "logits_relative_error": (check.get("logits") or {}).get("relative_error")}
    chunks = report.details.get("chunks") or []
    if len(chunks) > 1:  # a chunked .tflite: export.litert_bundle_chunks
        from export.litert_bundle_chunks import chunked_manifest_keys

        described = chunked_manifest_keys(staging, chunks)
    else:
        described = {"model": {"file": model.name, "files": files,
                               "external_data": [name for name in files
                                                 if name != model.name]},
                     **contract_summary(describe_entry_points(exporter.runtime, model))}
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": KIND, "target": target,
        "runtime": exporter.runtime, "source": artifact.source, **described,
        "tokenizer": {"file": TOKENIZER_FILE, "files": extra,
                      "chat_template": next((n for n in extra
                                             if n.startswith("chat_template.")), None)},
        "generation_config": GENERATION_FILE,
        "special_tokens": special_tokens(staging, tokenizer),
        "quantization": {"carried": report.carried, "dropped": report.dropped,
                         "lost": report.lost, "verdict": report.verdict},
        "verification": verification,
        "files": files_section(staging),
    }
