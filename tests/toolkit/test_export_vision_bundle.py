"""`toolkit export onnx|tflite --model VISION_MODEL --bundle DIR`: the manifest read back
must describe the file as the runtime sees it, and the sample it stores must be what
the model computes on the sample input, checked against two independent computations:

- PyTorch: the registered model on the sample pixels normalised here by hand,
  (x / 255 - mean) / std, in NCHW (the file folds both in; the bundle stores raw pixels);
- the runtime itself, driven here directly (onnxruntime's session, LiteRT's interpreter
  with its signature runner) from the names in the manifest, not through export code.

Also: the V-MoE's expert choice is an output equal to the model's own routing, a
changed file fails its sha256 in the reader, an existing DIR is refused in one line
with nothing written, a failed write keeps the old bundle, and LLM bundles say "kind"
"llm"."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.web_fixtures import llm_bundle, vision_bundle

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]
MODELS = ("fake-portrait", "fake-vmoe")


@pytest.fixture(scope="module")
def bundles_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vision-bundles")


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))


def _raw(bundle: Path, entry: dict) -> np.ndarray:
    data = np.fromfile(bundle / entry["file"], dtype=np.dtype(entry["dtype"]).newbyteorder("<"))
    return data.reshape(entry["shape"])


def _relative(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _pytorch(model: str, pixels: np.ndarray, layout: str) -> dict[str, np.ndarray]:
    """The registered model's outputs by role on raw `pixels`, normalised here."""
    import models

    loaded = models.load_model(model)
    x = torch.from_numpy(pixels.copy())
    if layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    mean = torch.tensor(loaded.vision.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.vision.std).view(1, -1, 1, 1)
    x = (x / 255 - mean) / std
    with torch.no_grad():
        main = loaded.module(x).numpy()
        if model == "fake-portrait":
            return {"mask": main}
        return {"logits": main, "experts": loaded.module.expert_choice(x).numpy()}


def _check_manifest(manifest: dict, model: str, target: str) -> None:
    layout = {"onnx": "NCHW", "tflite": "NHWC"}[target]
    pre = manifest["preprocessing"]
    assert manifest["format"] == "edge-toolkit-bundle" and manifest["version"] == 1
    assert manifest["target"] == target and manifest["source"] == model
    assert (pre["layout"], pre["color"], pre["value_range"]) == (layout, "RGB", [0, 255])
    assert pre["normalization_folded"] is True and manifest["verification"]["passed"]
    (pixels,) = manifest["inputs"]
    h, w = (32, 48) if model == "fake-portrait" else (16, 16)
    assert (pre["height"], pre["width"], pre["channels"]) == (h, w, 3)
    assert pixels["shape"] == ([1, 3, h, w] if layout == "NCHW" else [1, h, w, 3])
    assert pixels["dtype"] == "float32" and manifest["sample"]["input"]["shape"] == \
        pixels["shape"]
    if model == "fake-portrait":
        assert manifest["kind"] == "image-segmentation" and manifest["experts"] is None
        post = manifest["postprocessing"]
        assert (post["value"], post["apply_sigmoid"], post["threshold"]) == \
            ("probability", False, 0.5)
        assert post["mask"]["shape"] == [1, 1, h, w] == manifest["outputs"][0]["shape"]
    else:
        assert manifest["kind"] == "image-classification"
        post = manifest["postprocessing"]
        assert post["labels"] == [f"class {i}" for i in range(10)]
        assert post["value"] == "logits" and post["logits"]["shape"] == [1, 10]
        experts = manifest["experts"]
        assert (experts["top_k"], experts["num_experts"], experts["moe_blocks"]) == \
            (1, 4, [1, 2])
        assert experts["output"] == manifest["outputs"][1]["name"]
        assert (experts["dtype"], experts["shape"]) == ("int32", [1, 1])
    assert [o["role"] for o in manifest["sample"]["outputs"]] == \
        [o["role"] for o in manifest["outputs"]]


def _check_against_pytorch(bundle: Path, manifest: dict, model: str) -> None:
    sample = manifest["sample"]
    pixels = _raw(bundle, sample["input"])
    assert 0 <= pixels.min() and pixels.max() <= 255 and pixels.std() > 10
    reference = _pytorch(model, pixels, sample["input"]["layout"])
    for entry in sample["outputs"]:
        recorded = _raw(bundle, entry)
        if entry["role"] == "experts":
            assert np.array_equal(recorded, reference["experts"]), (recorded, reference)
        else:
            assert _relative(recorded, reference[entry["role"]]) < 1e-4


@pytest.mark.parametrize("model", MODELS)
def test_onnx_bundle_matches_pytorch_and_onnxruntime(bundles_dir, model):
    import onnxruntime as ort

    from export.bundle_read import main, open_bundle

    bundle = vision_bundle(bundles_dir, model, "onnx")
    manifest = open_bundle(bundle).manifest  # every sha256 checked
    _check_manifest(manifest, model, "onnx")
    assert sorted(manifest["files"]) == sorted(
        ["model.onnx", "sample_input.bin"]
        + [f"sample_output_{o['role']}.bin" for o in manifest["outputs"]])
    session = ort.InferenceSession(os.fspath(bundle / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == \
        [(t["name"], t["shape"]) for t in manifest["inputs"]]
    names = [o["name"] for o in manifest["outputs"]]
    assert [o.name for o in session.get_outputs()] == names
    pixels = _raw(bundle, manifest["sample"]["input"])
    got = session.run(names, {manifest["inputs"][0]["name"]: pixels})
    for value, entry in zip(got, manifest["sample"]["outputs"], strict=True):
        assert np.array_equal(value, _raw(bundle, entry))
    _check_against_pytorch(bundle, manifest, model)
    assert main([os.fspath(bundle), "--check"]) == 0


_LITERT_CHILD = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from export.bundle_read_vision import check_sample
bundle = sys.argv[1]
m = json.load(open(bundle + "/bundle.json"))
def raw(e):
    return np.fromfile(bundle + "/" + e["file"], dtype=e["dtype"]).reshape(e["shape"])
runner = Interpreter(model_path=bundle + "/model.tflite").get_signature_runner(
    m["model"]["signature"])
got = runner(**{m["inputs"][0]["name"]: raw(m["sample"]["input"])})
equal = [bool(np.array_equal(got[o["name"]], raw(s)))
         for o, s in zip(m["outputs"], m["sample"]["outputs"])]
print(json.dumps({"equal": equal, "reader": check_sample(__import__("pathlib").Path(bundle), m)}))
"""


@pytest.mark.parametrize("model", [
    # The portrait's LiteRT conversion alone takes ~12 s on 2 cores.
    pytest.param("fake-portrait", marks=pytest.mark.slow), "fake-vmoe"])
def test_tflite_bundle_matches_pytorch_and_litert(bundles_dir, model):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from export.bundle_read import open_bundle

    bundle = vision_bundle(bundles_dir, model, "tflite")
    manifest = open_bundle(bundle).manifest
    _check_manifest(manifest, model, "tflite")
    assert manifest["model"]["signature"] == "serving_default"
    assert manifest["inputs"][0]["name"] == "args_0"
    assert [o["name"] for o in manifest["outputs"]] == \
        [f"output_{i}" for i in range(len(manifest["outputs"]))]
    # The interpreter may abort the process hosting it: run it in a child.
    child = subprocess.run([sys.executable, "-c", _LITERT_CHILD, os.fspath(bundle)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert all(result["equal"]) and result["reader"]["ok"]
    _check_against_pytorch(bundle, manifest, model)


def test_a_changed_sample_or_model_fails_its_sha256(bundles_dir, tmp_path, capsys):
    from export.bundle_read import BundleError, main, open_bundle

    copy = tmp_path / "copy"
    shutil.copytree(vision_bundle(bundles_dir, "fake-vmoe", "onnx"), copy)
    sample = copy / "sample_output_logits.bin"
    data = bytearray(sample.read_bytes())
    data[5] ^= 0x01  # same size: only the checksum can tell
    sample.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sample_output_logits\.bin does not match its "
                                          r"sha256"):
        open_bundle(copy)
    assert main([os.fspath(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export the bundle again" in err
    (copy / "sample_output_experts.bin").unlink()
    with pytest.raises(BundleError, match=r"sample_output_experts\.bin is missing"):
        open_bundle(copy)
    manifest = _manifest(copy)
    (copy / "bundle.json").write_text(json.dumps({**manifest, "kind": "audio"}))
    with pytest.raises(BundleError, match="'audio' bundle.*upgrade Edge Toolkit"):
        open_bundle(copy)


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_existing_dir_refused_and_a_failed_write_keeps_the_old_bundle(
        toolkit_cli, bundles_dir, tmp_path, monkeypatch):
    import export.vision_bundle

    existing = tmp_path / "b"
    shutil.copytree(vision_bundle(bundles_dir, "fake-vmoe", "onnx"), existing)
    before = _contents(existing)
    result = toolkit_cli("export", "onnx", "--model", "fake-vmoe", "--bundle", existing,
                         "--quiet")
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert "exists: pass --overwrite" in result.err
    assert _contents(existing) == before

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(folder / "x"))

    monkeypatch.setattr(export.vision_bundle, "files_section", full)
    result = toolkit_cli("export", "onnx", "--model", "fake-vmoe", "--bundle", existing,
                         "--overwrite", "--quiet")
    assert result.code == 2 and "No space left on device" in result.err
    assert _contents(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging left


def test_fashion_mnist_vmoe_is_grey_28x28_with_its_class_names(tmp_path):
    """A V-MoE of the Fashion-MNIST shape (random weights): one grey channel, the data
    set's ten names in label order, and its folded normalisation."""
    from export import ExportOptions
    from export.bundle import write_bundle
    from models import fashion_mnist
    from models.registry import LoadedModel
    from models.vmoe import FASHION_MNIST, VisionMoE
    from models.vmoe_artifact import vision_input

    torch.manual_seed(0)
    module = VisionMoE(FASHION_MNIST).eval()
    loaded = LoadedModel(module=module, tokenizer=None, source="fashion-vmoe",
                         vision=vision_input((1, 1, 28, 28), fashion_mnist.MEAN,
                                             fashion_mnist.STD, "fashion-mnist"))
    report = write_bundle("onnx", loaded, tmp_path / "fm", ExportOptions())
    assert report.passed and report.path == os.fspath(tmp_path / "fm")
    manifest = _manifest(tmp_path / "fm")
    pre = manifest["preprocessing"]
    assert (pre["channels"], pre["height"], pre["width"], pre["color"]) == \
        (1, 28, 28, "grayscale")
    assert pre["mean"] == [0.2860] and pre["std"] == [0.3530]
    assert pre["dataset"] == "fashion-mnist" and "invert" in pre["dataset_note"]
    assert manifest["postprocessing"]["labels"] == list(fashion_mnist.CLASSES)
    assert manifest["postprocessing"]["labels"][9] == "Ankle boot"
    assert manifest["experts"]["num_experts"] == 4 and manifest["experts"]["moe_blocks"] \
        == [4, 5]
    assert manifest["inputs"][0]["shape"] == [1, 1, 28, 28]


def test_llm_bundles_say_kind_llm_and_still_generate(tmp_path_factory):
    pytest.importorskip("tokenizers")
    from export.bundle_read import open_bundle, self_check

    bundle = open_bundle(llm_bundle(tmp_path_factory.mktemp("llm")))
    assert bundle.manifest["kind"] == "llm" and bundle.max_context == 48
    assert self_check(bundle)["tokens_match"]


@pytest.mark.slow
def test_int8_litert_bundle_says_how_to_quantize_the_pixels(toolkit_cli, tmp_path):
    """A fully int8 LiteRT file takes int8 codes: the manifest gives the scale and zero
    point, the sample stays raw pixels, and its dequantized output is within the int8
    tolerance of PyTorch's (mean error, as the export judged it)."""
    pytest.importorskip("ai_edge_quantizer")
    bundle = tmp_path / "int8"
    result = toolkit_cli("export", "tflite", "--model", "fake-cnn", "--bundle", bundle,
                         "--int8", "--calibration-images", "8", "--quiet")
    assert result.code == 0, result.err
    manifest = _manifest(bundle)
    (pixels,) = manifest["inputs"]
    quantize = manifest["preprocessing"]["quantize"]
    assert pixels["dtype"] == manifest["preprocessing"]["dtype"] == quantize["dtype"] == "int8"
    assert quantize["scale"] == pixels["quantization"]["scale"] > 0
    assert manifest["postprocessing"]["dequantize"]["dtype"] == "int8"
    assert (manifest["sample"]["rtol"], manifest["sample"]["judged_on"]) == (0.05, "mean")
    child = subprocess.run([sys.executable, "-m", "export.bundle_read", os.fspath(bundle),
                            "--check", "--json"], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout.strip().splitlines()[-1])["ok"]
    sample = manifest["sample"]
    import models

    loaded = models.load_model("fake-cnn")
    x = torch.from_numpy(_raw(bundle, sample["input"]).copy()).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = loaded.module(loaded.vision.normalise(x)).numpy()
    got = _raw(bundle, sample["outputs"][0])
    assert np.abs(got - want).mean() / np.abs(want).max() < 0.05
