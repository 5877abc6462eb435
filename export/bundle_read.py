"""A bundle (export.bundle) read back the way an app reads it: the manifest checked, every
file's size and SHA-256 compared with it, then greedy generation with onnxruntime or
LiteRT and the `tokenizers` library alone; neither models/ nor transformers is touched.
A vision bundle (export.vision_bundle) instead runs its sample image and prints the
error against the recorded outputs (export.bundle_read_vision).

    python -m export.bundle_read DIR [--prompt TEXT] [--new-tokens N] [--check] [--json]

bundle.json, format "edge-toolkit-bundle", version 1, "kind" "llm" (absent in bundles
written before vision bundles existed; read as "llm"):

    target, runtime        "onnx" / "onnxruntime", "tflite" / "ai-edge-litert" or
                           "coreml" / "coremltools" (below)
    model                  {"file", "files" (with external data), "external_data"};
                           a chunked .tflite adds "chunks" (the files in run order)
    chunks                 chunked .tflite only: per file its "layers" [first, last] and
                           "signatures" (a later chunk takes "hidden", an earlier one
                           gives "hidden_out"); the keys below then describe the chain as
                           one decoder (export.litert_bundle_chunks)
    inputs, outputs        the decoder contract by role: name, dtype, shape ("tokens" is
                           the symbolic token count)
    signatures             per entry point of the file ("main"; or "prefill", "decode"):
                           each tensor's role, name in the file, dtype and shape
    cache                  {"layout": "[layers, kv_heads, max_context, head_dim]", "shape",
                           "dtype", "per_layer", "position"}: the key/value cache every
                           call takes and returns; per_layer: one [1, ...] slice per layer
                           and role (the signature's tensors carry their "layer"), bound
                           in place (export.onnx.cache_io)
    max_context, vocab_size
    prefill                {"signature", "decode_signature", "tokens"}: tokens null = any
                           prompt length in one call; else that many per call, the last
                           chunk padded
    tokenizer              {"file": "tokenizer.json", "files", "chat_template"}
    generation_config      the file name of the Hugging Face generation config
    special_tokens         {"bos", "pad", "unk": {"id", "text"}, "eos_ids": [...]}
    quantization           the export report's carried, dropped, lost and verdict
    verification           {"passed", "runtime", "prompt", "prompt_ids", "tokens", "rtol",
                           "logits_relative_error"} (null when exported with --no-verify)
    files                  {name: {"bytes", "sha256"}} for every file but bundle.json

A vision bundle, "kind" "image-segmentation" or "image-classification", has target,
runtime, source, quantization and files as above, and:

    family                 the model family (portrait, vmoe, cnn)
    model                  {"file", "files", "external_data", "signature"}: signature is
                           the LiteRT signature key ("serving_default"), null for ONNX
    inputs, outputs        read from the file: {"role", "name", "dtype", "shape"} where
                           name is what the runtime binds (ONNX value name; LiteRT
                           signature key, with the flatbuffer "tensor" name beside it) and
                           an int8 tensor has "quantization": {"scale", "zero_point"};
                           roles: "pixels"; "mask" or "logits"; "experts"
    preprocessing          {"height", "width", "channels", "layout" (NCHW / NHWC), "color"
                           (RGB / grayscale, with BT.601 weights), "dtype", "value_range"
                           [0, 255], "normalization_folded": true, "mean", "std", "note";
                           "quantize" for an int8 input; "dataset", "dataset_note"}: feed
                           raw 0..255 pixels, the file normalises itself
    postprocessing         segmentation: {"mask": {"output", "dtype", "shape"}, "value":
                           "probability", "apply_sigmoid": false, "threshold": 0.5};
                           classification: {"logits": {...}, "value": "logits",
                           "apply_softmax", "labels"}; "dequantize" for an int8 output
    experts                a per-image routed MoE: {"output", "dtype", "shape" [1, k],
                           "top_k", "num_experts", "moe_blocks", "meaning"}; else null
    verification           {"passed", "runtime", "reference", "rtol", "judged_on",
                           "outputs": [{"role", "name", "relative_error", ...}]} or null
    sample                 {"input": {"file", "dtype", "shape", "layout"}, "outputs":
                           [{"role", "name", "file", "dtype", "shape"}], "byte_order":
                           "little", "rtol", "judged_on"}: the verification image as raw
                           values and the runtime's outputs on it, for an app's own tests

A Core ML bundle (target "coreml", runtime "coremltools"; export.coreml_bundle for
vision, export.coreml_bundle_llm for LLMs) has the keys above with these differences:

    model                  {"file", "files": every file inside the package(s), by relative
                           path ("model.mlpackage/Data/com.apple.CoreML/model.mlmodel"),
                           "package": "mlpackage", "precision", "deployment_target",
                           "spec_version"}; LLMs add "packages" (run order)
    inputs, outputs        Core ML's feature names, dtypes and shapes from the spec; a
                           flexible dimension is "tokens" with "shape_range"; an output
                           whose shape the package does not declare has "shape_declared":
                           false
    verification           the export's structural checks, "ran": false (Core ML runs only
                           on macOS); LLMs add "prompt", "prompt_ids", "reference_tokens"
                           (PyTorch's greedy tokens) and "tokens": null
    sample (vision)        "produced_by": "PyTorch": the outputs are the PyTorch model's,
                           not a Core ML run's
    chunks, signatures (LLM)  per package: the layers it holds, what it takes and gives
                           (input_ids or hidden -> hidden_out or logits), its states
    cache (LLM)            "state": true, "states": ["keys", "values"]: Core ML states each
                           package keeps and updates, not tensors passed in and out

This reader checks every listed file's size and SHA-256 (export.bundle_read_coreml) and
says that it did not run the model; --check passes on the files.

A reader refuses a newer version; version 1 readers ignore keys they do not know.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from export.bundle_read_coreml import check_coreml, is_coreml
from export.bundle_read_coreml import describe as describe_coreml
from export.bundle_read_vision import (
    VISION_KINDS,
    VISION_REQUIRED,
    check_sample,
    describe,
    sample_files,
)
from export.errors import ExportError, require
from export.llm.greedy import Step, prefill

FORMAT = "edge-toolkit-bundle"
SUPPORTED_VERSION = 1
MANIFEST = "bundle.json"
LLM = "llm"
REQUIRED = ("target", "runtime", "model", "signatures", "cache", "max_context",
            "vocab_size", "prefill", "tokenizer", "special_tokens", "files")
HASH_CHUNK = 1 << 22


class BundleError(ExportError):
    """A bundle that cannot be read or does not match its manifest; the message names the
    fix (a CLI exits 2 on it, as on any ExportError)."""


@dataclasses.dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model"]["file"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]

    @property
    def max_context(self) -> int:
        return int(self.manifest["max_context"])

    @property
    def cache_shape(self) -> list[int]:
        return [int(d) for d in self.manifest["cache"]["shape"]]

    @property
    def eos_ids(self) -> set[int]:
        return {int(i) for i in self.manifest["special_tokens"].get("eos_ids", [])}

    def tokenizer(self):
        """tokenizers.Tokenizer of the bundle's tokenizer.json."""
        tokenizers = require("tokenizers", "onnx", "reading a bundle's tokenizer")
        return tokenizers.Tokenizer.from_file(
            os.fspath(self.path / self.manifest["tokenizer"]["file"]))


def read_manifest(path: Path) -> dict:
    """bundle.json of the bundle at `path`, its format, version and keys checked."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} holds no {MANIFEST}: it is not a bundle (write one with "
                          "`toolkit export TARGET --model M --bundle DIR`)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{file} is not valid JSON ({exc}): export the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file} is not an Edge Toolkit bundle manifest (format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r},"
                          f" expected {FORMAT!r}): export the bundle again")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{file} has version {version!r}, not a positive integer: export "
                          "the bundle again")
    if version > SUPPORTED_VERSION:
        raise BundleError(f"{file} is bundle version {version}, newer than this reader's "
                          f"{SUPPORTED_VERSION}: upgrade Edge Toolkit")
    kind = manifest.get("kind", LLM)
    if kind != LLM and kind not in VISION_KINDS:
        raise BundleError(f"{file} is a {kind!r} bundle; this reader knows {LLM} and "
                          f"{', '.join(VISION_KINDS)} ones: upgrade Edge Toolkit")
    required = REQUIRED if kind == LLM else VISION_REQUIRED
    missing = [key for key in required if key not in manifest]
    if missing:
        raise BundleError(f"{file} lacks {', '.join(missing)}: export the bundle again")
    objects = (("model", "signatures", "cache", "prefill", "tokenizer", "special_tokens",
                "files") if kind == LLM else ("model", "preprocessing", "postprocessing",
                                              "sample", "files"))
    wrong = [key for key in objects if not isinstance(manifest[key], dict)]
    wrong += [f"files[{name!r}]" for name, entry in manifest["files"].items()
              if not isinstance(entry, dict)] if "files" not in wrong else []
    if wrong:
        raise BundleError(f"{file}: {', '.join(wrong)} must be JSON objects: export the "
                          "bundle again")
    return manifest


def kind_of(manifest: dict) -> str:
    """"llm", "image-segmentation" or "image-classification"."""
    return manifest.get("kind", LLM)


def _inside(folder: Path, name: str) -> Path:
    """`folder / name`, refused when `name` would lead outside the bundle."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise BundleError(f"{folder / MANIFEST} names the file {name!r} outside the bundle: "
                          "export the bundle again")
    return folder / pure


def check_files(path: Path, manifest: dict) -> None:
    """Every listed file present with its size and SHA-256 (sizes first: cheap), and the
    model and tokenizer files among them; a BundleError naming the first that is not."""
    from export.bundle import sha256

    files = manifest["files"]
    needed = [*manifest["model"].get("files", [manifest["model"]["file"]]),
              *([manifest["tokenizer"]["file"]] if kind_of(manifest) == LLM
                else sample_files(manifest))]
    for name in needed:
        if name not in files:
            raise BundleError(f"{path / MANIFEST} lists no checksum for {name}: export the "
                              "bundle again")
    entries = [(_inside(path, name), entry) for name, entry in files.items()]
    for file, entry in entries:
        if not file.is_file():
            raise BundleError(f"{file} is missing: the bundle is incomplete, export it again")
        if file.stat().st_size != entry.get("bytes"):
            raise BundleError(f"{file} has {file.stat().st_size} bytes, not the "
                              f"{entry.get('bytes')} in {MANIFEST} (changed or damaged after "
                              "export): export the bundle again")
    for file, entry in entries:
        if sha256(file) != entry.get("sha256"):
            raise BundleError(f"{file} does not match its sha256 in {MANIFEST} (changed or "
                              "damaged after export): export the bundle again")


def open_bundle(path: Path, *, verify_files: bool = True) -> Bundle:
    """The bundle at `path`, its files checked against the manifest unless told not to."""
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    if verify_files:
        check_files(path, manifest)
    return Bundle(path, manifest)


def _bound(signature: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """([(input name, dtype)] in role order, [output name] in role order)."""
    roles_in = ("input_ids", "position", "past_keys", "past_values")
    roles_out = ("logits", "present_keys", "present_values")
    by_in = {t["role"]: t for t in signature["inputs"]}
    by_out = {t["role"]: t for t in signature["outputs"]}
    return ([(by_in[r]["name"], by_in[r]["dtype"]) for r in roles_in],
            [by_out[r]["name"] for r in roles_out])


def runtime_steps(bundle: Bundle, threads: int | None = None) -> tuple[Step, Step, int | None]:
    """(prefill step, decode step, fixed prefill length or None) over the bundle's model
    file, each binding the contract's roles to the file's tensor names and dtypes."""
    if bundle.runtime == "ai-edge-litert" and bundle.manifest.get("chunks"):
        from export.bundle_read_chunks import chunked_steps

        return chunked_steps(bundle, threads)
    if bundle.runtime == "onnxruntime":
        # The session binds by the contract the file itself records (stacked or per-layer
        # cache, export.onnx.cache_io), updating a per-layer cache in place.
        from export.onnx.llm_session import OnnxDecoderSession

        session = OnnxDecoderSession.open(bundle.model_path, threads)
        return session, session, None
    signatures, chosen = bundle.manifest["signatures"], bundle.manifest["prefill"]
    entries = {name: _bound(signatures[name])
               for name in (chosen["signature"], chosen["decode_signature"])}
    if bundle.runtime == "ai-edge-litert":
        require("ai_edge_litert", "litert", "running LiteRT bundles")
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=os.fspath(bundle.model_path), num_threads=threads)

        def make(name: str) -> Step:
            inputs, outputs = entries[name]
            runner = interpreter.get_signature_runner(name)

            def step(ids, position, keys, values):
                result = runner(**{n: np.asarray(a, dtype=d) for (n, d), a
                                   in zip(inputs, (ids, position, keys, values), strict=True)})
                return [result[n] for n in outputs]
            return step
    else:
        raise BundleError(f"{bundle.path / MANIFEST} names runtime {bundle.runtime!r}; this "
                          "reader runs onnxruntime and ai-edge-litert bundles")
    tokens = chosen.get("tokens")
    return (make(chosen["signature"]), make(chosen["decode_signature"]),
            int(tokens) if tokens else None)


def generate_ids(bundle: Bundle, prompt_ids: Sequence[int], new_tokens: int, *,
                 stop_at_eos: bool = False, steps: tuple | None = None) -> list[int]:
    """Greedy continuation of `prompt_ids`: prefill (in the file's fixed-length chunks
    where it has them), then one decode call per token feeding the caches back; stops
    after an end-of-sequence id when `stop_at_eos`. `steps`: runtime_steps(bundle), to
    reuse a loaded runtime across calls."""
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids or new_tokens < 1:
        raise BundleError("give a prompt of at least one token and at least one new token")
    if len(prompt_ids) + new_tokens > bundle.max_context:
        raise BundleError(f"the prompt ({len(prompt_ids)} tokens) + {new_tokens} new tokens "
                          f"exceed the bundle's max context of {bundle.max_context}: shorten "
                          "them, or export with a larger --max-context")
    prefill_step, decode_step, chunk = steps or runtime_steps(bundle)
    try:
        logits, keys, values = prefill(prefill_step, prompt_ids, bundle.cache_shape,
                                       bundle.max_context, chunk)
    except ValueError as exc:  # the padded prompt does not fit the fixed context
        raise BundleError(f"{exc}: shorten the prompt") from None
    tokens = [int(logits[-1].argmax())]
    position = len(prompt_ids)
    while len(tokens) < new_tokens and not (stop_at_eos and tokens[-1] in bundle.eos_ids):
        ids = np.asarray([[tokens[-1]]], dtype=np.int64)
        out, keys, values = decode_step(ids, np.asarray([position], dtype=np.int64), keys,
                                        values)
        tokens.append(int(np.asarray(out)[0, -1].argmax()))
        position += 1
    return tokens


def generate_text(bundle: Bundle, prompt: str, new_tokens: int, *,
                  stop_at_eos: bool = True) -> str:
    """The decoded greedy continuation of `prompt` (no special tokens added or shown)."""
    tokenizer = bundle.tokenizer()
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    return tokenizer.decode(generate_ids(bundle, ids, new_tokens, stop_at_eos=stop_at_eos),
                            skip_special_tokens=True)


def self_check(bundle: Bundle) -> dict:
    """Re-run the export's verification prompt from the bundle alone: the tokenizer must
    encode it to the recorded ids and generation must give the recorded tokens."""
    check = bundle.manifest.get("verification")
    if not check or not check.get("tokens"):
        raise BundleError(f"{bundle.path / MANIFEST} records no verified tokens (exported "
                          "with --no-verify): export it again with verification")
    ids = bundle.tokenizer().encode(check["prompt"], add_special_tokens=False).ids
    tokens = generate_ids(bundle, check["prompt_ids"], len(check["tokens"]))
    return {"tokenizer_matches": ids == check["prompt_ids"],
            "tokens_match": tokens == check["tokens"], "tokens": tokens,
            "expected": check["tokens"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.bundle_read",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--prompt", help="text to continue (default: the verification prompt)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--check", action="store_true",
                        help="re-run the recorded verification (vision: the sample); exit "
                             "1 if it differs")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        bundle = open_bundle(args.bundle)
        if is_coreml(bundle.manifest):  # files checked; Core ML runs only on macOS
            result = check_coreml(bundle.path, bundle.manifest)
            print(json.dumps(result) if args.json else describe_coreml(result))
            return 0 if result["ok"] or not args.check else 1
        if kind_of(bundle.manifest) != LLM:  # run the sample; --check: exit 1 if it differs
            result = check_sample(bundle.path, bundle.manifest, args.threads)
            print(json.dumps(result) if args.json else describe(result))
            return 0 if result["ok"] or not args.check else 1
        if args.check:
            result = self_check(bundle)
            ok = result["tokenizer_matches"] and result["tokens_match"]
            print(json.dumps(result) if args.json else
                  f"{'ok' if ok else 'MISMATCH'}: {result['tokens']} vs {result['expected']}")
            return 0 if ok else 1
        prompt = args.prompt if args.prompt is not None else (
            (bundle.manifest.get("verification") or {}).get("prompt") or "Hello")
        tokenizer = bundle.tokenizer()
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        steps = runtime_steps(bundle, args.threads)
        tokens = generate_ids(bundle, ids, args.new_tokens, stop_at_eos=True, steps=steps)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        print(json.dumps({"prompt_ids": ids, "tokens": tokens, "text": text}) if args.json
              else prompt + text)
        return 0
    except ExportError as exc:
        print(f"bundle_read: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
