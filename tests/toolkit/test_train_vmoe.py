"""`toolkit train vmoe` end to end on small runs: the artifact, its manifest, seeding,
loading it back, expert dropping on it, and the data-set errors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import models
from models import fashion_mnist
from models.registry import LoadedModel
from models.vmoe import flops_per_image
from models.vmoe_artifact import vision_input
from toolkit.artifacts import save_model_artifact
from toolkit.commands.train_cmd import CONFIGS
from toolkit.data.images import ImageData
from toolkit.train.vmoe_trainer import TrainSettings, train_vmoe

needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist.available(),
                                         reason="apt-get install dataset-fashion-mnist")
QUICK = ["--config", "fashion-mnist-small", "--epochs", "1", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def trained(toolkit_cli, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vmoe")
    out, report = tmp / "moe", tmp / "moe.json"
    result = toolkit_cli("train", "vmoe", "--train-limit", "640", "--out", out,
                         "--json", report, *QUICK)
    assert result.code == 0, result.err
    return out, json.loads(report.read_text(encoding="utf-8"))


@needs_fashion_mnist
def test_manifest_has_every_field(trained):
    out, manifest = trained
    saved = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    for key in ("format", "family", "config", "input", "router", "training", "data", "superclasses",
                "superclass_source", "metrics", "history", "versions", "timing_seconds"):
        assert key in saved, key
    assert saved["family"] == "vmoe" and saved["input"]["dataset"] == "fashion-mnist"
    # The data hash, from the package's files: image bytes, then labels as int64.
    with gzip.open(fashion_mnist.ROOT / "train-images-idx3-ubyte.gz") as f:
        digest = hashlib.sha256(f.read()[16:])
    with gzip.open(fashion_mnist.ROOT / "train-labels-idx1-ubyte.gz") as f:
        digest.update(np.frombuffer(f.read(), np.uint8, offset=8).astype("<i8").tobytes())
    assert saved["data"]["sha256"] == digest.hexdigest()
    assert saved["training"]["train_images"] == 640 and saved["training"]["seed"] == 0
    assert saved["training"]["epochs"] == 1 and saved["threads"] == 1
    test = saved["metrics"]["test"]
    assert test["images"] == 10_000 and 0.0 <= test["accuracy"] <= 1.0
    assert test["params_active"] < test["params_total"]
    groups = saved["superclasses"]
    assert len(groups) == 4 and sorted(c for g in groups for c in g) == sorted(
        fashion_mnist.CLASSES)
    per_class = test["per_class_accuracy"]
    assert list(per_class) == list(fashion_mnist.CLASSES)
    assert sum(per_class.values()) / 10 == pytest.approx(test["accuracy"], abs=0.01)
    config = models.load_model(str(out)).module.config
    assert test["flops_per_image"] == flops_per_image(config)
    confusion = torch.tensor(saved["superclass_source"]["confusion_on_held_out_training_images"])
    assert int(confusion.sum()) == 6000  # the 10% held out of the 60,000 training images


@needs_fashion_mnist
def test_load_back_same_logits_and_same_seed_same_weights(trained, toolkit_cli,
                                                                    tmp_path):
    out, _ = trained
    loaded = models.load_model(str(out))
    state = load_file(str(out / "model.safetensors"))
    for name, tensor in loaded.module.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    pixels = loaded.vision.images(4, 0)
    assert pixels.shape == (4, 1, 28, 28) and float(pixels.max()) > 1.0
    with torch.no_grad():
        images = loaded.vision.normalise(pixels)
        reloaded = models.load_model(str(out)).module
        assert torch.equal(loaded.module(images), reloaded(images))
    # Same seed, same thread count: identical weights (the fixture ran with other threads).
    runs = []
    for name in ("first", "second"):
        result = toolkit_cli("train", "vmoe", "--router", "end-to-end", "--train-limit", "320",
                             "--out", tmp_path / name, *QUICK)
        assert result.code == 0, result.err
        runs.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@needs_fashion_mnist
def test_drop_experts_on_the_trained_model_writes_a_smaller_loadable_one(trained, toolkit_cli,
                                                                       tmp_path):
    out, _ = trained
    dropped, report = tmp_path / "dropped", tmp_path / "dropped.json"
    result = toolkit_cli("compress", "--model", out, "--method", "drop-experts",
                         "--criterion", "frequency", "--drop", "0.5", "--calib-samples", "128",
                         "--out", dropped, "--json", report, "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads(report.read_text(encoding="utf-8"))
    assert "test_accuracy" in manifest["metrics"]["after"]
    loaded = models.load_model(str(dropped))
    assert loaded.module.config.num_experts == 2
    assert loaded.module.router.weight.shape[0] == 2
    # The dropped model exports with its per-image routing and is verified on onnxruntime.
    exported = tmp_path / "dropped.onnx"
    result = toolkit_cli("export", "onnx", "--model", dropped, "--out", exported,
                         "--json", tmp_path / "export.json")
    assert result.code == 0, result.err
    check = json.loads((tmp_path / "export.json").read_text(encoding="utf-8"))
    assert exported.is_file() and check["verification"]["passed"]


@needs_fashion_mnist
def test_superclasses_from_a_given_dense_artifact(toolkit_cli, tmp_path):
    dense, moe = tmp_path / "dense", tmp_path / "moe"
    result = toolkit_cli("train", "vmoe", "--router", "dense", "--train-limit", "320",
                         "--out", dense, *QUICK)
    assert result.code == 0, result.err
    saved = json.loads((dense / "toolkit.json").read_text(encoding="utf-8"))
    assert saved["config"]["moe_layers"] == 0 and "superclasses" not in saved
    test = saved["metrics"]["test"]
    assert test["params_active"] == test["params_total"]
    result = toolkit_cli("train", "vmoe", "--dense", dense, "--train-limit", "320",
                         "--out", moe, *QUICK)
    assert result.code == 0, result.err
    source = json.loads((moe / "toolkit.json").read_text(encoding="utf-8"))["superclass_source"]
    assert source["dense_artifact"] == str(dense) and "dense_trained_here" not in source
    result = toolkit_cli("train", "vmoe", "--router", "end-to-end", "--dense", dense,
                         "--out", tmp_path / "e2e", *QUICK)
    assert result.code == 2 and "--dense is read only by --router superclass" in result.err
    for given, words in ((tmp_path / "nothing", "is not an artifact directory"),
                         (moe, "is a V-MoE with experts")):
        result = toolkit_cli("train", "vmoe", "--dense", given, "--train-limit", "64",
                             "--out", tmp_path / "again", *QUICK)
        assert result.code == 2 and words in result.err, result.err


def test_trained_module_saved_and_loaded_gives_the_same_logits(tmp_path):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(96) % 3
    split = (pixels, labels)
    data = ImageData(split, split, split, ("a", "b", "c"), (0.5,), (0.3,), "test", "", "")
    config = dataclasses.replace(CONFIGS["fashion-mnist-small"], num_classes=3)
    module, _ = train_vmoe(config, data, "end-to-end", TrainSettings(epochs=1, batch_size=32),
                           show_progress=False)
    vision = vision_input((1, 1, 28, 28), (0.5,), (0.3,), None)
    trained = LoadedModel(module=module, tokenizer=None, source="test", vision=vision)
    save_model_artifact(tmp_path / "art", trained, {"router": "end-to-end"})
    loaded = models.load_model(str(tmp_path / "art"))
    assert loaded.module.config == module.config and not loaded.module.config.renormalize
    x = data.normalise(pixels[:16])
    with torch.no_grad():
        assert torch.equal(loaded.module(x), module(x))


def _folder(root, classes: int, per_class: int = 6):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (20, 20), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def test_image_folder_dataset_trains(toolkit_cli, tmp_path):
    _folder(tmp_path / "data", 3)
    out = tmp_path / "out"
    result = toolkit_cli("train", "vmoe", "--dataset", tmp_path / "data", "--experts", "2",
                         "--out", out, *QUICK)
    assert result.code == 0, result.err
    saved = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    assert saved["data"]["classes"] == ["class0", "class1", "class2"]
    assert saved["config"]["num_classes"] == 3


@pytest.mark.parametrize("make, words", [
    (lambda root: root.mkdir(), "has 0 class subfolder"),
    (lambda root: _folder(root, 1), "has 1 class subfolder"),
    (lambda root: (_folder(root, 2), (root / "class1" / "bad.png").write_text("not an image")),
     "bad.png is not a readable image"),
])
def test_bad_image_folders_are_named(toolkit_cli, tmp_path, make, words):
    make(tmp_path / "data")
    result = toolkit_cli("train", "vmoe", "--dataset", tmp_path / "data",
                         "--out", tmp_path / "out", *QUICK)
    assert result.code == 2 and words in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_fashion_mnist_names_the_package(toolkit_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "ROOT", tmp_path)
    monkeypatch.setattr(fashion_mnist, "_CACHE", {})
    result = toolkit_cli("train", "vmoe", "--out", tmp_path / "out", *QUICK)
    assert result.code == 2 and "apt-get install dataset-fashion-mnist" in result.err
