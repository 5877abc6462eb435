"""Portrait artifact directories: written by toolkit.artifacts.save_model_artifact (the
portrait family), loaded through
models.load_model, compared with the module they came from (a pruned one with irregular
expansion widths too); broken ones are one-line ModelErrors; nothing is unpickled."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import models
from models.errors import ModelError
from models.families.portrait import portrait_loaded
from models.load import model_family
from models.portrait import FAKE_CONFIG, PortraitSegmenter
from models.portrait_surgery import expansion_widths, prune_expansion_channels
from toolkit.artifacts import save_model_artifact

MEAN, STD = (0.4, 0.5, 0.6), (0.3, 0.25, 0.2)


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(5)
    module = PortraitSegmenter(FAKE_CONFIG).eval()
    with torch.no_grad():  # batch norms that are not the identity
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module


def pixels(count=3, seed=0):
    return torch.randint(0, 256, (count, 3, FAKE_CONFIG.height, FAKE_CONFIG.width),
                         generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_round_trip_same_outputs_no_pickle(original, tmp_path, monkeypatch):
    manifest = {"metrics": {"test": {"miou": 0.5}}}
    out = save_model_artifact(tmp_path / "p", portrait_loaded(original, mean=MEAN, std=STD),
                              manifest)
    written = json.loads((out / "toolkit.json").read_text())
    assert written["family"] == "portrait" and written["metrics"] == {"test": {"miou": 0.5}}
    assert manifest["family"] == "portrait"  # filled in place for the caller's --json
    assert written["config"]["hidden_channels"] == []
    assert model_family(str(out)) == "vision"
    assert not list(tmp_path.glob(".p.staging-*"))

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called")

    monkeypatch.setattr(torch, "load", no_pickles)
    loaded = models.load_model(str(out))
    assert isinstance(loaded.module, PortraitSegmenter) and not loaded.module.training
    assert loaded.module.config == original.config
    spec = loaded.vision
    assert spec.shape == (1, 3, 32, 48) and spec.mean == MEAN and spec.std == STD
    x = spec.normalise(pixels())
    # Independent normalisation: channel 1 of image 0 by hand.
    assert torch.allclose(x[0, 1], (pixels()[0, 1].float() / 255 - 0.5) / 0.25)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), original(x))
        assert torch.equal(loaded.module.forward_train(x).attributes,
                           original.forward_train(x).attributes)
    assert spec.images(4, 1).shape == (4, 3, 32, 48)  # placeholder patterns


def test_pruned_hidden_channels_round_trip(original, tmp_path):
    widths = expansion_widths(original)
    names = list(widths)
    keep = {names[0]: range(0, widths[names[0]], 2), names[-1]: [0, 3, 5]}
    pruned = prune_expansion_channels(original, keep).eval()
    assert pruned.config.hidden_channels[0] == len(range(0, widths[names[0]], 2))
    assert pruned.config.hidden_channels[-1] == 3
    out = save_model_artifact(tmp_path / "pruned", portrait_loaded(pruned),
                              {"pruning": {"kept": 0.9}})
    written = json.loads((out / "toolkit.json").read_text())
    assert written["config"]["hidden_channels"] == list(pruned.config.hidden_channels)
    loaded = models.load_model(str(out)).module
    assert loaded.config == pruned.config
    state = load_file(str(out / "model.safetensors"))
    assert state[f"{names[-1]}.project_conv.weight"].shape[1] == 3
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_calibration_images_are_the_stored_ones(original, tmp_path):
    stored = pixels(5, seed=3)
    out = save_model_artifact(tmp_path / "c", portrait_loaded(original, samples=stored), {})
    images = models.load_model(str(out)).vision.images(7, 2)
    assert images.shape == (7, 3, 32, 48) and images.dtype == torch.float32
    # Each drawn image is one of the stored ones; the first five are all of them.
    flat = stored.flatten(1).float()
    matches = [(flat == img.flatten()).all(1).nonzero().flatten().tolist()
               for img in images]
    assert all(len(m) == 1 for m in matches)
    assert sorted(m[0] for m in matches[:5]) == [0, 1, 2, 3, 4]


def expect_one_line_error(path, *words):
    with pytest.raises(ModelError) as info:
        models.load_model(str(path))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_mismatched_shapes_are_a_model_error(original, tmp_path):
    out = save_model_artifact(tmp_path / "bad", portrait_loaded(original), {})
    manifest = json.loads((out / "toolkit.json").read_text())
    widths = list(expansion_widths(original).values())
    manifest["config"]["hidden_channels"] = [w - 1 for w in widths]  # weights say w
    (out / "toolkit.json").write_text(json.dumps(manifest))
    expect_one_line_error(out, "does not match its config", "wrong shapes")


def test_broken_artifacts(original, tmp_path):
    out = save_model_artifact(tmp_path / "broken", portrait_loaded(original), {})
    state = load_file(str(out / "model.safetensors"))
    state.pop("head.bias")
    save_file(state, str(out / "model.safetensors"))
    expect_one_line_error(out, "missing", "head.bias")

    (out / "model.safetensors").write_bytes(b"not safetensors")
    expect_one_line_error(out, "safetensors")

    (out / "model.safetensors").unlink()
    expect_one_line_error(out, "missing")

    manifest = json.loads((out / "toolkit.json").read_text())
    manifest["config"]["colour"] = "red"
    (out / "toolkit.json").write_text(json.dumps(manifest))
    expect_one_line_error(out, "config")

    manifest["config"].pop("colour")
    manifest["config"]["height"] = 30
    (out / "toolkit.json").write_text(json.dumps(manifest))
    expect_one_line_error(out, "multiple of 16")

    manifest["config"]["height"] = 32
    manifest["config"]["hidden_channels"] = [8, 8]
    (out / "toolkit.json").write_text(json.dumps(manifest))
    expect_one_line_error(out, "hidden_channels")

    manifest["config"]["hidden_channels"] = []
    manifest.pop("input")
    (out / "toolkit.json").write_text(json.dumps(manifest))
    expect_one_line_error(out, "input")
