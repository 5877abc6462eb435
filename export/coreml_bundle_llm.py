"""The Core ML half of `export.bundle.write_bundle` for LLMs: the stateful iOS 18
package(s) (export.coreml.llm, or consecutive chunks with --chunks / a model read one
tensor at a time: export.coreml.chunked) with the tokenizer and generation config, and a
bundle.json that says how to run them.

    DIR/model.mlpackage/...                   one package: input_ids, position -> logits
        or model_chunk1.mlpackage/.. model_chunkN.mlpackage/..
                                              run in that order: chunk k's hidden_out
                                              feeds chunk k+1's hidden, same position
        tokenizer.json, tokenizer_config.json, chat_template.jinja, generation_config.json
        bundle.json

Manifest keys are the LLM bundle's (export.bundle_read) where they mean the same thing,
read from the packages' specs (export.coreml_bundle_io; coremltools declares outputs
without a shape, so logits [1, T, vocab] takes the vocab from the model config and a
chunk's hidden_out the next chunk's hidden input, each marked "shape_declared": false),
and:

    model       {"file" (the first package), "packages" (run order), "files" (every file
                inside every package), "precision": "float16", "deployment_target"}
    chunks      per package in run order: {"file", "layers" [first, last], "input",
                "output", "cache" [its layers, kv_heads, max_context, head_dim]}
    signatures  per package: its one function's inputs, outputs and states
    cache       the key/value cache as Core ML states ("keys", "values", fp16): no cache
                tensors cross the interface; each package updates its own state in place
    prefill     one function takes any T in 1..max_context: the prompt in one call
    verification  the export's structural checks ("ran": false), the prompt and its ids,
                and PyTorch's greedy tokens on it as "reference_tokens" (a float32 model;
                the package computes in float16, so a long continuation may part from
                them): what an app's first run can be compared with

Core ML runs only on macOS, so nothing here ran a package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.bundle import (
    GENERATION_FILE,
    KIND,
    TOKENIZER_FILE,
    special_tokens,
    write_generation_config,
    write_tokenizer_files,
)
from export.bundle_files import BUNDLE_FORMAT, BUNDLE_VERSION, files_section, folder_files
from export.coreml_bundle import DEPLOYMENT_TARGET, NOT_RUN, TARGET
from export.coreml_bundle_io import TOKENS, describe_package
from export.errors import ExportError
from export.llm.streamed import StreamedArtifact
from export.options import ExportOptions
from export.registry import get_exporter
from export.report import ExportReport

STATES = ("keys", "values")
FIRST_INPUT, LATER_INPUT = "input_ids", "hidden"
LAST_OUTPUT, MIDDLE_OUTPUT = "logits", "hidden_out"


def coreml_llm_manifest(staging: Path, model: Path, artifact: Any, tokenizer,
                        report: ExportReport, options: ExportOptions) -> dict:
    """Add the tokenizer files and generation config to `staging`; bundle.json."""
    extra = write_tokenizer_files(staging, tokenizer)
    write_generation_config(staging, artifact, tokenizer)
    chunks = report.details.get("chunks") or [{"file": model.name, "layers": None}]
    packages = [c["file"] for c in chunks]
    described = {name: describe_package(staging / name) for name in packages}
    signatures = {name: _signature(d) for name, d in described.items()}
    first, last = signatures[packages[0]], signatures[packages[-1]]
    _check_ends(packages, first, last)
    _fill_output_shapes(packages, signatures, _config(artifact).vocab_size)
    caches = [next(s for s in signatures[name]["states"] if s["name"] == "keys")["shape"]
              for name in packages]
    layers, kv_heads, max_context, head_dim = caches[0]
    logits = last["outputs"][0]
    files = [f for name in packages for f in folder_files(staging, staging / name)]
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": KIND, "target": TARGET,
        "runtime": get_exporter(TARGET).runtime, "source": artifact.source,
        "model": {"file": packages[0], "packages": packages, "files": files,
                  "external_data": [], "package": "mlpackage", "precision": "float16",
                  "deployment_target": DEPLOYMENT_TARGET,
                  "spec_version": described[packages[0]]["spec_version"]},
        "chunks": [_chunk(c, index, len(packages), signatures[c["file"]], caches[index])
                   for index, c in enumerate(chunks)],
        "inputs": [_symbolic(t) for t in first["inputs"]],
        "outputs": [_symbolic(t) for t in last["outputs"]],
        "signatures": signatures,
        "cache": {"layout": "[layers, kv_heads, max_context, head_dim]",
                  "shape": [sum(c[0] for c in caches), kv_heads, max_context, head_dim],
                  "dtype": _state_dtype(first), "per_layer": False, "state": True,
                  "states": list(STATES),
                  "position": "index of the first new token; the call writes its keys and "
                              "values at position .. position+T-1 of the package's state",
                  "note": "Core ML states (iOS 18): make one state per package "
                          "(MLModel.makeState()), pass it to every prediction of that "
                          "package, make new ones for a new conversation; no cache tensors "
                          "are inputs or outputs"},
        "max_context": int(max_context), "vocab_size": int(logits["shape"][-1]),
        "prefill": {"signature": "main", "decode_signature": "main", "tokens": None,
                    "note": "one function per package: input_ids of any length T in "
                            "1..max_context in one call (the prompt), then T = 1 per new "
                            "token"},
        "tokenizer": {"file": TOKENIZER_FILE, "files": extra,
                      "chat_template": next((n for n in extra
                                             if n.startswith("chat_template.")), None)},
        "generation_config": GENERATION_FILE,
        "special_tokens": special_tokens(staging, tokenizer),
        "quantization": {"carried": report.carried, "dropped": report.dropped,
                         "lost": report.lost, "verdict": report.verdict},
        "verification": _verification(report, artifact, tokenizer, options),
        "files": files_section(staging),
    }


def _signature(described: dict) -> dict:
    """A package's features with their roles (Core ML names them by role already)."""
    def roles(features: list[dict]) -> list[dict]:
        return [{"role": f["name"], **f} for f in features]
    return {"inputs": roles(described["inputs"]), "outputs": roles(described["outputs"]),
            "states": roles(described["states"])}


def _config(artifact: Any):
    """The transformers config the decoder was re-authored from (export.llm)."""
    return artifact.lazy.config if isinstance(artifact, StreamedArtifact) else \
        artifact.module.config


def _fill_output_shapes(packages: list[str], signatures: dict, vocab: int) -> None:
    """The converter declares outputs without a shape: hidden_out is the next package's
    hidden input, logits [1, T, vocab] with the model config's vocab; said as such."""
    for index, name in enumerate(packages):
        for output in signatures[name]["outputs"]:
            if output["shape"]:
                continue
            if output["name"] == LAST_OUTPUT:
                output["shape"] = [1, TOKENS, int(vocab)]
            else:
                later = signatures[packages[index + 1]]["inputs"][0]
                output["shape"] = list(later["shape"])
            output["shape_declared"] = False


def _check_ends(packages: list[str], first: dict, last: dict) -> None:
    """The chain starts at token ids and ends at logits, with the cache as states."""
    names = ([t["name"] for t in first["inputs"]], [t["name"] for t in last["outputs"]],
             sorted(s["name"] for s in first["states"]))
    if names != ([FIRST_INPUT, "position"], [LAST_OUTPUT], sorted(STATES)):
        raise ExportError(f"{packages[0]} .. {packages[-1]} take {names[0]}, give "
                          f"{names[1]} and hold states {names[2]}, not input_ids, position "
                          "-> logits with keys, values: export it again with this version "
                          "of Edge Toolkit")


def _chunk(chunk: dict, index: int, count: int, signature: dict, cache: list) -> dict:
    """One package of the chain: what it takes and gives, which layers it holds."""
    return {"index": index, "file": chunk["file"],
            "layers": chunk["layers"] or [0, int(cache[0]) - 1],
            "input": FIRST_INPUT if index == 0 else LATER_INPUT,
            "output": LAST_OUTPUT if index == count - 1 else MIDDLE_OUTPUT,
            "cache": [int(d) for d in cache],
            "inputs": [t["name"] for t in signature["inputs"]],
            "outputs": [t["name"] for t in signature["outputs"]]}


def _symbolic(tensor: dict) -> dict:
    """The tensor by role, as the LLM bundle's model-level inputs / outputs."""
    return {"name": tensor["role"], "dtype": tensor["dtype"], "shape": tensor["shape"],
            **{key: tensor[key] for key in ("shape_range", "shape_declared")
               if key in tensor}}


def _state_dtype(signature: dict) -> str:
    return next(s["dtype"] for s in signature["states"] if s["name"] == "keys")


def _verification(report: ExportReport, artifact: Any, tokenizer,
                  options: ExportOptions) -> dict | None:
    check = report.verification
    if check is None:
        return None
    prompt_ids = [int(i) for i in tokenizer(options.prompt, add_special_tokens=False)
                  ["input_ids"]]
    reference, why = None, ("not computed: the model was read one tensor at a time "
                            "(--engine streaming), too large to run again here")
    if not isinstance(artifact, StreamedArtifact):
        from export.llm.check import torch_greedy

        reference, _ = torch_greedy(artifact.module, prompt_ids, options.new_tokens)
        why = ("PyTorch's greedy tokens (float32) for the prompt: the package computes in "
               "float16, so a run may part from them after a near tie")
    return {"passed": bool(check.get("passed")), "runtime": check.get("runtime"),
            "ran": False, "numerics": NOT_RUN, "checks": check.get("checks", []),
            "prompt": options.prompt, "prompt_ids": prompt_ids, "tokens": None,
            "reference": "PyTorch", "reference_tokens": reference, "reference_note": why}
