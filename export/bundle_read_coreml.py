"""A Core ML bundle (export.coreml_bundle, export.coreml_bundle_llm) read back as far as
this machine allows: the manifest, and the size and SHA-256 of every file it lists,
every file inside each .mlpackage included (export.bundle_read.check_files, before this
runs). Core ML itself runs only on macOS, so off it the report says that the model was
not run, and `--check` passes on the files alone.

On macOS with coremltools, a vision bundle's sample is run through the package
(coremltools' MLModel.predict) and compared with the recorded PyTorch outputs as
export.bundle_read_vision compares: error = max (or mean) |Core ML - sample| / max
|sample|, integer outputs equal. That path was written without a Mac to run it on.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from export.bundle_read_vision import VISION_KINDS, compare, read_raw

RUNTIME = "coremltools"
NOT_RUN = "Core ML runs only on macOS: the model was not run here"


def is_coreml(manifest: dict) -> bool:
    return manifest.get("runtime") == RUNTIME


def check_coreml(path: Path, manifest: dict) -> dict:
    """{"ok", "files", "ran", "note"} (+ the sample comparison where Core ML runs)."""
    files = len(manifest["files"])
    packages = manifest["model"].get("packages", [manifest["model"]["file"]])
    result = {"ok": True, "files": files, "packages": packages, "ran": False,
              "note": NOT_RUN}
    if platform.system() != "Darwin" or manifest.get("kind") not in VISION_KINDS:
        return result
    compared = _run_sample(Path(path), manifest)
    return {**result, **compared, "ran": True, "note": "run with Core ML (coremltools)"}


def _run_sample(path: Path, manifest: dict) -> dict:
    import coremltools as ct

    sample = manifest["sample"]
    pixels = read_raw(path / sample["input"]["file"], sample["input"]["dtype"],
                      sample["input"]["shape"])
    model = ct.models.MLModel(os.fspath(path / manifest["model"]["file"]))
    out = model.predict({manifest["inputs"][0]["name"]: pixels.astype(np.float32)})
    got = [np.asarray(out[o["name"]]) for o in manifest["outputs"]]
    return compare(path, manifest, got)


def describe(result: dict) -> str:
    """One line for a terminal."""
    head = (f"files ok: {result['files']} files match their sha256 "
            f"({', '.join(result['packages'])} included)")
    if not result["ran"]:
        return f"{head}; {result['note']}"
    lines = [f"{o['role']} ({o['name']}): " + (("equal" if o["equal"] else "DIFFERENT")
                                               if "equal" in o else
                                               f"relative error {o['error']:.3g}")
             for o in result["outputs"]]
    return f"{head}; {'ok' if result['ok'] else 'MISMATCH'}: " + "; ".join(lines)
