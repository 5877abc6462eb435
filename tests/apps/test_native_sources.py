"""apps/android (Kotlin) and apps/ios (Swift) cannot be compiled or run here (no Android
SDK, no Xcode), so their link to the bundle format is checked from the sources: every
bundle.json key their parsing code names must be one the exporter writes, the keys they
depend on must be named at all, and the values they compare with ("format", "kind",
"runtime", "layout", tensor roles and dtypes) must be the exporter's. A renamed key in
export/ then fails here instead of in an app nobody here can build.

Keys are read from the sources the way they are written there: Kotlin through org.json
accessors with a literal key (getString("k"), optJSONObject("k"), optText("k"), ..),
Swift through CodingKeys cases with a raw string (case valueRange = "value_range").
Each app is checked against the bundles it reads. Android: `toolkit export tflite
--bundle` of the fake portrait and the fake V-MoE (tests/web_fixtures.py). iOS: `toolkit
export coreml --bundle` of the same two (tests/apps/coreml_fixtures.py; skipped without
coremltools). Both cached per session. The sections only other models produce (a grey
Fashion-MNIST input, fully int8 tensors) come from the functions the exporter builds them
with (export.bundle_vision_sections).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from export.bundle_vision_sections import CLASSIFICATION, postprocessing, preprocessing
from tests.apps.coreml_fixtures import coreml_bundle
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
# tensor's quantization.
ANDROID_REQUIRED = {"model", "signature", "name", "quantization", "scale", "zero_point"}
# iOS runs Core ML bundles only: it binds features by the names the manifest read from
# the package, finds the package and its files, and says whose outputs the sample holds.
IOS_REQUIRED = {"target", "runtime", "model", "name", "package", "produced_by"}
MODELS = ("fake-portrait", "fake-vmoe")


def _keys(value) -> set[str]:
    """Every dictionary key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def _read(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def native_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("native-bundles")


@pytest.fixture(scope="module")
def manifests(native_root) -> dict[str, dict]:
    """The LiteRT bundles Android reads."""
    return {model: _read(vision_bundle(native_root, model, "tflite")) for model in MODELS}


@pytest.fixture(scope="module")
def coreml_manifests(native_root) -> dict[str, dict]:
    """The Core ML bundles iOS reads."""
    pytest.importorskip("coremltools")
    return {model: _read(coreml_bundle(native_root, model)) for model in MODELS}


GREY = SimpleNamespace(shape=(1, 1, 28, 28), mean=(0.286,), std=(0.353,),
                       dataset="fashion-mnist")


def _written(manifests: dict[str, dict], optional: dict) -> set[str]:
    """Keys the exporter writes: the real manifests plus the optional sections."""
    keys = _keys(optional)
    for manifest in manifests.values():
        keys |= _keys(manifest)
    return keys


def android_written(manifests) -> set[str]:
    int8 = {"scale": 1.0, "zero_point": -128}
    pixels = {"name": "args_0", "dtype": "int8", "shape": [1, 28, 28, 1], "quantization": int8}
    logits = {"name": "output_0", "dtype": "int8", "shape": [1, 10], "quantization": int8}
    return _written(manifests, {
        "preprocessing": preprocessing(GREY, "NHWC", pixels),
        "postprocessing": postprocessing(CLASSIFICATION, logits, ["a"] * 10),
        "inputs": [pixels]})


def ios_written(coreml_manifests) -> set[str]:
    pixels = {"name": "pixels", "dtype": "float32", "shape": [1, 1, 28, 28]}
    return _written(coreml_manifests, {"preprocessing": preprocessing(GREY, "NCHW", pixels)})


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


def test_every_key_android_reads_is_written(manifests):
    read = kotlin_keys()
    assert len(read) > 20, f"found only {sorted(read)} in the Kotlin manifest parser"
    assert sorted(read - android_written(manifests)) == []


def test_every_key_ios_reads_is_in_a_coreml_bundle(coreml_manifests):
    read = swift_keys()
    assert len(read) > 20, f"found only {sorted(read)} in the Swift manifest parser"
    assert sorted(read - ios_written(coreml_manifests)) == []


@pytest.mark.parametrize("app", ["android", "ios"])
def test_the_keys_an_app_needs_are_read(app):
    read = kotlin_keys() if app == "android" else swift_keys()
    needed = REQUIRED | (ANDROID_REQUIRED if app == "android" else IOS_REQUIRED)
    assert sorted(needed - read) == []


def test_required_keys_are_in_real_manifests(manifests, coreml_manifests):
    """REQUIRED itself is not stale: each key is in a plain exported manifest."""
    for found, extra in ((manifests, set()), (coreml_manifests, IOS_REQUIRED)):
        present = set().union(*(_keys(m) for m in found.values()))
        assert sorted((REQUIRED | extra) - present) == []


def test_android_compares_with_the_exporters_values(manifests):
    kotlin = sources(ANDROID_SOURCES, ".kt")
    for manifest in manifests.values():
        tensors = manifest["inputs"] + manifest["outputs"]
        values = {manifest["format"], manifest["kind"], manifest["runtime"],
                  manifest["model"]["signature"], manifest["preprocessing"]["layout"],
                  *(t["role"] for t in tensors), *(t["dtype"] for t in tensors)}
        missing = sorted(v for v in values if f'"{v}"' not in kotlin)
        assert missing == [], f"{manifest['source']}: the Kotlin sources never name {missing}"


def test_ios_compares_with_the_exporters_values(coreml_manifests):
    swift = sources(IOS_SOURCES, ".swift")
    for manifest in coreml_manifests.values():
        named = [*manifest["inputs"], *manifest["outputs"], *manifest["sample"]["outputs"]]
        values = {manifest["format"], manifest["kind"], manifest["target"],
                  manifest["runtime"], manifest["model"]["package"], "NCHW",
                  *(t["role"] for t in named if t["role"] in ("pixels", "experts")),
                  *(t["dtype"] for t in named)}
        missing = sorted(v for v in values if f'"{v}"' not in swift)
        assert missing == [], f"{manifest['source']}: the Swift sources never name {missing}"


def test_ios_binds_the_features_the_coreml_bundle_names(coreml_manifests):
    """The app binds the input by the role "pixels" and the outputs by the names the
    manifest gives (postprocessing's mask / logits output, experts.output); each must be
    one of the package's features as the manifest lists them, with that role."""
    runner = (IOS_SOURCES / "VisionRunner.swift").read_text()
    manifest_swift = SWIFT_MANIFEST.read_text()
    assert "manifest.pixelsInput" in runner and '$0.role == "pixels"' in manifest_swift
    assert "outputs[main.name]" in runner and "outputs[spec.name]" in runner
    for manifest in coreml_manifests.values():
        outputs = {o["name"]: o["role"] for o in manifest["outputs"]}
        post = manifest["postprocessing"]
        main = (post.get("mask") or post["logits"])["output"]
        assert outputs[main] in ("mask", "logits")
        if manifest["experts"] is not None:
            assert outputs[manifest["experts"]["output"]] == "experts"
        assert [i["role"] for i in manifest["inputs"]] == ["pixels"]


def test_ios_checks_every_file_inside_the_package(coreml_manifests):
    """Manifest.read refuses a bundle unless model.files lists files inside model.file,
    each with a checksum in "files"; BundleLibrary.verify hashes all of "files" and
    refuses a package file the manifest does not list. The real manifests pass the first
    condition, and their "files" are exactly the folder's (tests/toolkit/
    test_export_coreml_bundle.py checks them against os.walk and hashlib)."""
    library = (IOS_SOURCES / "BundleLibrary.swift").read_text()
    assert "for name in manifest.files.keys.sorted()" in library
    assert "is inside the package but not in bundle.json" in library
    assert 'hasPrefix(manifest.model.file + "/")' in SWIFT_MANIFEST.read_text()
    for manifest in coreml_manifests.values():
        package = manifest["model"]["file"]
        assert package.endswith(".mlpackage") and manifest["model"]["files"]
        assert all(f.startswith(package + "/") and f in manifest["files"]
                   for f in manifest["model"]["files"])
        assert f"{package}/Data/com.apple.CoreML/model.mlmodel" in manifest["files"]
