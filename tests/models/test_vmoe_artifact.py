"""V-MoE artifact directories (models.vmoe_artifact): written here by hand (safetensors +
toolkit.json, as the format is documented), loaded through models.load_model, compared
with the module they came from; broken ones name the problem; nothing is unpickled."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

import models
from models import fashion_mnist
from models.errors import ModelError
from models.load import model_family
from models.vmoe import FAKE_CONFIG, VisionMoE, drop_experts

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def write_artifact(directory, module: VisionMoE, dataset: str | None = None,
                   mean=MEAN, std=STD):
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              str(directory / "model.safetensors"))
    manifest = {"format": "edge-toolkit-artifact/1", "family": "vmoe",
                "config": dataclasses.asdict(module.config),
                "input": {"mean": list(mean), "std": list(std), "dataset": dataset}}
    (directory / "toolkit.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(3)
    module = VisionMoE(FAKE_CONFIG).eval()
    with torch.no_grad():  # ViT init leaves the router near uniform: make routes differ
        module.router.weight.normal_(0.0, 1.0)
    return module


def test_load_back_gives_the_same_module_and_logits(original, tmp_path, monkeypatch):
    directory = write_artifact(tmp_path / "vmoe", original)
    assert model_family(str(directory)) == "vision"

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called")

    monkeypatch.setattr(torch, "load", no_pickles)
    loaded = models.load_model(str(directory))
    module = loaded.module
    assert isinstance(module, VisionMoE) and not module.training
    assert module.config == original.config
    spec = loaded.vision
    assert spec.shape == (1, 3, 16, 16) and spec.mean == MEAN and spec.std == STD
    pixels = spec.images(5, 1)
    assert pixels.shape == (5, 3, 16, 16) and pixels.dtype == torch.float32
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 255.0
    assert torch.equal(pixels, spec.images(5, 1))  # seeded
    x = spec.normalise(pixels)
    with torch.no_grad():
        assert torch.equal(module(x), original(x))
        assert torch.equal(module.expert_choice(x), original.expert_choice(x))


def test_a_dropped_model_with_fewer_experts_loads_back(original, tmp_path):
    dropped = drop_experts(copy.deepcopy(original), [3, 1])
    directory = write_artifact(tmp_path / "dropped", dropped)
    module = models.load_model(str(directory)).module
    assert module.config.num_experts == 2 and module.router.weight.shape == (2, 32)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(module(x), dropped(x))


@pytest.mark.skipif(not fashion_mnist.available(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_artifact_draws_its_images_from_the_data_set(tmp_path):
    config = dataclasses.replace(FAKE_CONFIG, image_size=28, patch_size=7, channels=1)
    module = VisionMoE(config).eval()
    directory = write_artifact(tmp_path / "fmnist", module, "fashion-mnist",
                               fashion_mnist.MEAN, fashion_mnist.STD)
    spec = models.load_model(str(directory)).vision
    pixels = spec.images(8, 0)
    train, _ = fashion_mnist.load_split("train")
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(pixels, train[order[:8]].float())
    images, labels = spec.labelled_test()
    assert images.shape == (10_000, 1, 28, 28) and labels.shape == (10_000,)


def test_weights_that_do_not_match_the_config_are_named(original, tmp_path):
    directory = write_artifact(tmp_path / "bad", original)
    manifest = json.loads((directory / "toolkit.json").read_text(encoding="utf-8"))
    manifest["config"]["num_experts"] = 2
    (directory / "toolkit.json").write_text(json.dumps(manifest), encoding="utf-8")
    wrong = r"does not match its config.*wrong shapes.*\(4, \d+, 32\) != \(2, \d+, 32\)"
    with pytest.raises(ModelError, match=wrong):
        models.load_model(str(directory))


def test_incomplete_or_broken_artifacts_are_named(original, tmp_path):
    directory = write_artifact(tmp_path / "missing", original)
    (directory / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="model.safetensors is missing"):
        models.load_model(str(directory))
    directory = write_artifact(tmp_path / "noconfig", original)
    (directory / "toolkit.json").write_text('{"family": "vmoe"}', encoding="utf-8")
    with pytest.raises(ModelError, match="lacks a valid V-MoE config"):
        models.load_model(str(directory))
