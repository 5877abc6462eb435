"""The bench job a browser runs: for every model named on the command line, the files
the server may serve (a bundle's files as its bundle.json lists them, or the one exported
file and its external data), a manifest (the bundle's own, or one described from the file
the same way `--bundle` would) and, for a model that is not an LLM, the fixed inputs the
Python bench feeds it (toolkit.bench.runtimes.fixed_input), as raw little-endian bytes,
so the browser and the host runtime see the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from pathlib import Path

import numpy as np

from toolkit.bench.session import BenchOptions, bench_prompt, file_sha256
from toolkit.errors import UserError

BUNDLE_MANIFEST = "bundle.json"
BACKENDS = ("auto", "wasm", "webgpu")
RUNTIME_OF_BUNDLE = {"onnxruntime": "onnxruntime", "ai-edge-litert": "litert"}
DTYPE_NAMES = {"float": "float32", "float16": "float16", "int64": "int64", "int32": "int32",
               "int8": "int8", "uint8": "uint8"}


@dataclasses.dataclass
class ServedModel:
    name: str  # as given on the command line
    runtime: str  # onnxruntime | litert (the host runtime its accuracy is compared with)
    model_path: Path  # the model file itself
    files: dict[str, Path]  # served under /models/<index>/<name>
    manifest: dict
    inputs: list[dict]  # {"name", "dtype", "shape", "bytes"}: fixed inputs (not LLMs)


@dataclasses.dataclass
class BenchJob:
    id: str
    options: BenchOptions
    backend: str
    models: list[ServedModel]

    def document(self) -> dict:
        """bench/job.json, as apps/web/lib/protocol.js reads it."""
        o = self.options
        return {
            "schema": "edge-toolkit-bench-job", "version": 1, "id": self.id,
            "options": {"warmup": o.warmup, "runs": o.runs, "min_seconds": o.min_seconds,
                        "prompt_tokens": o.prompt_tokens, "prefill_runs": o.prefill_runs,
                        "threads": o.threads, "backend": self.backend, "seed": 0},
            "prompt": bench_prompt(o.prompt_tokens),
            "models": [{"name": m.name, "runtime": m.runtime, "base": f"models/{i}/",
                        "manifest": m.manifest,
                        "inputs": [{"name": x["name"], "dtype": x["dtype"],
                                    "shape": x["shape"],
                                    "url": f"bench/inputs/{i}/{k}.bin"}
                                   for k, x in enumerate(m.inputs)]}
                       for i, m in enumerate(self.models)],
        }


def prepare_job(paths: list[str], options: BenchOptions, backend: str) -> BenchJob:
    """The job for `paths` (bundle folders, .onnx or .tflite files); one-line refusals
    for what a browser cannot run."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend} is not one of {', '.join(BACKENDS)}")
    models, seen = [], set()
    for spec in paths:
        path = Path(spec).expanduser()
        if spec in seen:
            raise UserError(f"{spec} is given twice: list each model once")
        seen.add(spec)
        if path.is_dir():
            models.append(_bundle_model(spec, path))
        elif path.suffix.lower() in (".onnx", ".tflite"):
            from toolkit.commands.bench_cmd import check_model_file

            check_model_file(spec, path)
            models.append(_file_model(spec, path))
        else:
            raise UserError(f"{spec}: --device runs bundle folders (`toolkit export ... "
                            "--bundle DIR`) and .onnx / .tflite files, not PyTorch models: "
                            "export it first")
    for model in models:
        context = model.manifest.get("max_context")
        if model.manifest.get("kind", "llm") == "llm" and isinstance(context, int) \
                and options.prompt_tokens + 1 > context:
            raise UserError(f"{model.name}: a {options.prompt_tokens}-token prompt does not "
                            f"fit its exported context of {context}: lower --prompt-tokens")
    return BenchJob(secrets.token_hex(8), options, backend, models)


def _bundle_model(spec: str, folder: Path) -> ServedModel:
    manifest_path = folder / BUNDLE_MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{spec} is a folder without {BUNDLE_MANIFEST}: pass a bundle "
                        "written by `toolkit export TARGET --model M --bundle DIR`, or the "
                        "model file itself")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        listed = manifest["files"]
        model_file = manifest["model"]["file"]
        bundle_runtime = manifest["runtime"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{manifest_path} is not a readable bundle manifest: export the "
                        "bundle again") from None
    check_browser_runtime(spec, bundle_runtime)
    runtime = RUNTIME_OF_BUNDLE[bundle_runtime]
    files = {}
    for name in listed:
        target = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not target.is_file():
            raise UserError(f"{manifest_path} lists {name!r}, which is not a file inside the "
                            "bundle: export the bundle again")
        files[name] = target
    if model_file not in files:
        raise UserError(f"{manifest_path} names model {model_file!r} but lists no such "
                        "file: export the bundle again")
    model = ServedModel(spec, runtime, files[model_file], files, manifest, [])
    _check_runnable(model)
    if manifest.get("kind", "llm") != "llm":
        model.inputs = _fixed_inputs(model)
    return model


def check_browser_runtime(spec: str, runtime) -> None:
    """A bundle a browser can run: ONNX or LiteRT, not Core ML (Apple devices only)."""
    if runtime not in RUNTIME_OF_BUNDLE:
        raise UserError(f"{spec} is a {runtime} bundle, which a browser cannot run: export "
                        "an ONNX or tflite bundle of the model (`toolkit export onnx|tflite "
                        "--bundle DIR`)")


def _file_model(spec: str, path: Path) -> ServedModel:
    runtime = "onnxruntime" if path.suffix.lower() == ".onnx" else "litert"
    files = {path.name: path}
    data = path.with_name(path.name + ".data")
    if runtime == "onnxruntime" and data.is_file():
        files[data.name] = data
    manifest = _describe_file(spec, path, runtime, files)
    model = ServedModel(spec, runtime, path, files, manifest, [])
    _check_runnable(model)
    if manifest["kind"] != "llm":
        model.inputs = _fixed_inputs(model)
    return model


def _describe_file(spec: str, path: Path, runtime: str, files: dict[str, Path]) -> dict:
    """A bundle-shaped manifest for a lone exported file: the LLM contract read from the
    file as `--bundle` reads it, or just its inputs for any other model."""
    manifest = {"format": "edge-toolkit-bundle", "version": 1, "runtime": runtime,
                "model": {"file": path.name, "files": sorted(files),
                          "external_data": sorted(n for n in files if n != path.name)},
                "files": {n: {"bytes": p.stat().st_size, "sha256": file_sha256(os.fspath(p))}
                          for n, p in files.items()}}
    if runtime == "onnxruntime" and _is_llm_onnx(path):
        from export.bundle_io import contract_summary, describe_entry_points

        try:
            manifest.update(contract_summary(describe_entry_points("onnxruntime", path)))
        except Exception as exc:
            raise UserError(f"{spec}: its LLM contract cannot be read ({exc}): re-export it "
                            "with `toolkit export onnx`") from None
        manifest["kind"] = "llm"
    elif runtime == "litert" and _is_llm_tflite(path):
        manifest["kind"] = "llm"
    else:
        manifest["kind"] = "model"
    return manifest


def _is_llm_onnx(path: Path) -> bool:
    import onnx

    from toolkit.bench.runtimes import LLM_METADATA_KEY

    model = onnx.load(os.fspath(path), load_external_data=False)
    return any(p.key == LLM_METADATA_KEY for p in model.metadata_props)


def _is_llm_tflite(path: Path) -> bool:
    from ai_edge_litert.interpreter import Interpreter

    return {"prefill", "decode"} <= set(Interpreter(model_path=os.fspath(path))
                                        .get_signature_list())


def _check_runnable(model: ServedModel) -> None:
    if model.runtime == "litert" and model.manifest.get("kind", "llm") == "llm":
        raise UserError(f"{model.name} is a LiteRT LLM (prefill/decode signatures), which the "
                        "web app does not run: bench its ONNX export (`toolkit export onnx "
                        "--bundle DIR`) in the browser, or this file with `toolkit bench`")


def _fixed_inputs(model: ServedModel) -> list[dict]:
    """The Python bench's inputs for this file, as {"name", "dtype", "shape", "bytes"}."""
    from toolkit.bench.runtimes import fixed_input

    if model.runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(os.fspath(model.model_path),
                                       providers=["CPUExecutionProvider"])
        arrays = [(arg.name, fixed_input(arg.shape, arg.type)) for arg in session.get_inputs()]
    else:
        from ai_edge_litert.interpreter import Interpreter

        from export.litert.run_model import DefaultRunner

        runner = DefaultRunner(Interpreter(model_path=os.fspath(model.model_path)))
        prepared = runner.prepare({
            name: fixed_input(list(d["shape"]), "float" if d["quantization"][0]
                              else np.dtype(d["dtype"]).name)
            for name, d in runner.input_details.items()})
        arrays = list(prepared.items())
    inputs = []
    for name, array in arrays:
        array = np.ascontiguousarray(array)
        dtype = DTYPE_NAMES.get(array.dtype.name, array.dtype.name)
        inputs.append({"name": name, "dtype": dtype, "shape": list(array.shape),
                       "bytes": array.astype(array.dtype.newbyteorder("<")).tobytes()})
    return inputs
