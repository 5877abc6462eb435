"""`write_bundle(target, artifact, bundle, options)`: an exported LLM as an app-ready
folder, everything a demo app or the device benchmark needs and nothing it must guess.

    DIR/model.onnx (+ model.onnx.data) | model.tflite   the verified file (export_model)
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

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from export.bundle_io import contract_summary, describe_entry_points
from export.errors import ExportError
from export.job import export_model
from export.llm.streamed import StreamedArtifact
from export.options import ExportOptions
from export.registry import artifact_kind, get_exporter
from export.report import ExportReport
from models.staging import make_staging_dir, sweep_stale_staging

BUNDLE_FORMAT = "edge-toolkit-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"
MODEL_STEM = "model"
BUNDLE_TARGETS = ("onnx", "tflite")  # the runtimes export.bundle_read can generate with
TOKENIZER_FILE = "tokenizer.json"
GENERATION_FILE = "generation_config.json"
HASH_CHUNK = 1 << 22


def check_bundle_dir(target: str, bundle: Path, options: ExportOptions) -> Path:
    """`bundle` made absolute, refused before any work when it cannot become the bundle."""
    if target not in BUNDLE_TARGETS:
        raise ExportError(f"--bundle is written for {' and '.join(BUNDLE_TARGETS)} (the "
                          f"runtimes a bundle is read back with), not {target}: use --out "
                          "for a single file")
    given = Path(bundle).expanduser()
    if given.exists() or given.is_symlink():
        if not given.is_dir() or given.is_symlink():
            raise ExportError(f"--bundle {given} exists and is not a folder: choose a new path")
        if not options.overwrite:
            raise ExportError(f"--bundle {given} exists: pass --overwrite or choose another "
                              "path")
        if any(given.iterdir()) and not (given / MANIFEST).is_file():
            raise ExportError(f"--bundle {given} is a folder that holds no {MANIFEST}, so it "
                              "is not a bundle --overwrite may replace: choose a new path")
    return Path(os.path.abspath(given))


def write_bundle(target: str, artifact: Any, bundle: Path,
                 options: ExportOptions | None = None) -> ExportReport:
    """Export `artifact` (a models.LoadedModel or an export.llm.streamed.StreamedArtifact
    of a decoder LM) to `target` as a bundle at `bundle`. A report whose verification
    failed comes back with path None and nothing written, as from export_model."""
    options = options or ExportOptions()
    bundle = check_bundle_dir(target, bundle, options)
    tokenizer = _checked_tokenizer(artifact)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(bundle.parent)
    staging = make_staging_dir(bundle)
    try:
        model = staging / f"{MODEL_STEM}{get_exporter(target).suffix}"
        report = export_model(target, artifact, model,
                              dataclasses.replace(options, overwrite=False))
        if not report.passed:
            return report
        extra = _write_tokenizer_files(staging, tokenizer)
        _write_generation_config(staging, artifact, tokenizer)
        manifest = bundle_manifest(target, staging, model, artifact, tokenizer, report,
                                   options, extra)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n",
                                        encoding="utf-8")
        _move_into_place(staging, bundle)
        report.path = os.fspath(bundle)
        report.details["bundle_files"] = sorted(manifest["files"]) + [MANIFEST]
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checked_tokenizer(artifact: Any):
    """The artifact's fast tokenizer; a one-line refusal for what cannot be bundled."""
    if artifact_kind(artifact) != "llm" or getattr(artifact, "tokenizer", None) is None:
        raise ExportError(f"--bundle packages a language model with its tokenizer; "
                          f"{artifact.source} is not one: export it with --out")
    tokenizer = artifact.tokenizer
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ExportError(f"the tokenizer of {artifact.source} is not a fast (tokenizers) "
                          f"one, so it has no {TOKENIZER_FILE} for apps to read: add the "
                          f"model's {TOKENIZER_FILE} to its folder")
    return tokenizer


def _write_tokenizer_files(staging: Path, tokenizer) -> list[str]:
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


def _write_generation_config(staging: Path, artifact: Any, tokenizer) -> None:
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
    model_files = sorted(p.name for p in staging.iterdir()
                         if p.name == model.name or p.name.startswith(model.name + "."))
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
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "target": target,
        "runtime": exporter.runtime, "source": artifact.source,
        "model": {"file": model.name, "files": model_files,
                  "external_data": [name for name in model_files if name != model.name]},
        **contract_summary(describe_entry_points(exporter.runtime, model)),
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


def files_section(folder: Path) -> dict[str, dict]:
    """{relative name: {"bytes", "sha256"}} for every file under `folder` but the manifest."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks (a 7B model's weights are several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _move_into_place(staging: Path, bundle: Path) -> None:
    """Rename the complete `staging` to `bundle`; an existing bundle is set aside first and
    removed only after the new one is in place (put back if the rename fails)."""
    if not bundle.exists():
        os.replace(staging, bundle)
        return
    retired = make_staging_dir(bundle, "old")
    try:
        os.replace(bundle, retired / "old")
        try:
            os.replace(staging, bundle)
        except BaseException:
            os.replace(retired / "old", bundle)
            raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
