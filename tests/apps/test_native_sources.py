"""apps/android (Kotlin) and apps/ios (Swift) cannot be compiled or run here (no Android
SDK, no Xcode), so their link to the bundle format is checked from the sources: every
bundle.json key their parsing code names must be one the exporter writes, the keys they
depend on must be named at all, and the values they compare with ("format", "kind",
"runtime", "layout", tensor roles and dtypes) must be the exporter's. A renamed key in
export/ then fails here instead of in an app nobody here can build.

Keys are read from the sources the way they are written there: Kotlin through org.json
accessors with a literal key (getString("k"), optJSONObject("k"), optText("k"), ..),
Swift through CodingKeys cases with a raw string (case valueRange = "value_range").
Real manifests come from `toolkit export tflite --bundle` of the fake portrait and the
fake V-MoE (tests/web_fixtures.py, cached per session); the sections only other models
produce (a grey Fashion-MNIST input, fully int8 tensors) come from the functions the
exporter builds them with (export.bundle_vision_sections).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from export.bundle_vision_sections import CLASSIFICATION, postprocessing, preprocessing
from tests.web_fixtures import vision_bundle

APPS = Path(__file__).resolve().parents[2] / "apps"
ANDROID_SOURCES = APPS / "android/app/src/main/java/org/edgetoolkit/demo"
KOTLIN_MANIFEST = ANDROID_SOURCES / "bundle/Manifest.kt"
IOS_SOURCES = APPS / "ios/EdgeDemo.swiftpm/Sources"
SWIFT_MANIFEST = IOS_SOURCES / "Manifest.swift"

KOTLIN_KEY = re.compile(r'\.(?:get|opt|has|isNull)\w*\(\s*"([A-Za-z0-9_]+)"')
SWIFT_CODING_KEYS = re.compile(r"enum CodingKeys: String, CodingKey \{(.*?)\}", re.S)
SWIFT_CASE = re.compile(r'case\s+(\w+)\s*=\s*"([^"]+)"')
SWIFT_BARE_CASE = re.compile(r"case\s+\w+\s*(?:,|$)", re.M)

# What both apps cannot work without: the envelope, the input size and colour, the mask
# or logits with labels, the expert choice, the files' hashes and the sample check.
REQUIRED = {
    "format", "version", "kind", "inputs", "outputs", "preprocessing", "height", "width",
    "channels", "layout", "color", "value_range", "postprocessing", "mask", "threshold",
    "logits", "labels", "apply_softmax", "experts", "output", "top_k", "num_experts",
    "files", "bytes", "sha256", "sample", "rtol", "role", "dtype", "shape", "file",
}
# LiteRT binds tensors by the manifest's signature and names, and int8 files need the
# tensor's quantization; Core ML names its own tensors, so iOS does not read these.
ANDROID_REQUIRED = {"model", "signature", "name", "quantization", "scale", "zero_point"}


def _keys(value) -> set[str]:
    """Every dictionary key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("native-bundles")
    return {model: json.loads((vision_bundle(root, model, "tflite") / "bundle.json")
                              .read_text())
            for model in ("fake-portrait", "fake-vmoe")}


@pytest.fixture(scope="module")
def written_keys(manifests) -> set[str]:
    """Keys the exporter writes: the real manifests plus the optional sections."""
    grey = SimpleNamespace(shape=(1, 1, 28, 28), mean=(0.286,), std=(0.353,),
                           dataset="fashion-mnist")
    int8 = {"scale": 1.0, "zero_point": -128}
    pixels = {"name": "args_0", "dtype": "int8", "shape": [1, 28, 28, 1], "quantization": int8}
    logits = {"name": "output_0", "dtype": "int8", "shape": [1, 10], "quantization": int8}
    optional = {
        "preprocessing": preprocessing(grey, "NHWC", pixels),
        "postprocessing": postprocessing(CLASSIFICATION, logits, ["a"] * 10),
        "inputs": [pixels],
    }
    keys = _keys(optional)
    for manifest in manifests.values():
        keys |= _keys(manifest)
    return keys


def kotlin_keys() -> set[str]:
    return set(KOTLIN_KEY.findall(KOTLIN_MANIFEST.read_text()))


def swift_keys() -> set[str]:
    keys = set()
    for block in SWIFT_CODING_KEYS.findall(SWIFT_MANIFEST.read_text()):
        assert not SWIFT_BARE_CASE.search(block), (
            f"a CodingKeys case without a raw string in Manifest.swift: {block.strip()!r}; "
            "spell every key out so this test sees it")
        keys |= {raw for _, raw in SWIFT_CASE.findall(block)}
    return keys


def sources(root: Path, suffix: str) -> str:
    return "\n".join(p.read_text() for p in sorted(root.rglob(f"*{suffix}")))


@pytest.mark.parametrize("app", ["android", "ios"])
def test_every_key_an_app_reads_is_written(app, written_keys):
    read = kotlin_keys() if app == "android" else swift_keys()
    assert len(read) > 20, f"found only {sorted(read)} in the {app} manifest parser"
    assert sorted(read - written_keys) == []


@pytest.mark.parametrize("app", ["android", "ios"])
def test_the_keys_an_app_needs_are_read(app):
    read = kotlin_keys() if app == "android" else swift_keys()
    needed = REQUIRED | (ANDROID_REQUIRED if app == "android" else set())
    assert sorted(needed - read) == []


def test_required_keys_are_in_real_manifests(manifests):
    """REQUIRED itself is not stale: each key is in a plain exported manifest."""
    present = set().union(*(_keys(m) for m in manifests.values()))
    assert sorted(REQUIRED - present) == []


def test_android_compares_with_the_exporters_values(manifests):
    kotlin = sources(ANDROID_SOURCES, ".kt")
    for manifest in manifests.values():
        tensors = manifest["inputs"] + manifest["outputs"]
        values = {manifest["format"], manifest["kind"], manifest["runtime"],
                  manifest["model"]["signature"], manifest["preprocessing"]["layout"],
                  *(t["role"] for t in tensors), *(t["dtype"] for t in tensors)}
        missing = sorted(v for v in values if f'"{v}"' not in kotlin)
        assert missing == [], f"{manifest['source']}: the Kotlin sources never name {missing}"


def test_ios_compares_with_the_exporters_values(manifests):
    swift = sources(IOS_SOURCES, ".swift")
    for manifest in manifests.values():
        values = {manifest["format"], manifest["kind"], "NCHW", "NHWC",
                  *(o["role"] for o in manifest["sample"]["outputs"] if o["role"] == "experts"),
                  *(o["dtype"] for o in manifest["sample"]["outputs"])}
        missing = sorted(v for v in values if f'"{v}"' not in swift)
        assert missing == [], f"{manifest['source']}: the Swift sources never name {missing}"


def test_ios_reads_the_input_name_the_coreml_exporter_writes():
    """export/coreml/vision.py names the Core ML input "pixels"; the app looks it up."""
    exporter = (Path(__file__).resolve().parents[2] / "export/coreml/vision.py").read_text()
    assert 'ct.TensorType(name="pixels"' in exporter
    assert 'inputs["pixels"]' in (IOS_SOURCES / "VisionRunner.swift").read_text()
