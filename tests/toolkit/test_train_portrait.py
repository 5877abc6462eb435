"""`toolkit train portrait` and its pieces on the fake 32x48 config: training lowers the
loss, seeds repeat, the extra-loss hook, evaluation against numbers worked out by hand,
the CLI's artifact loading back to the same outputs and metrics, a user folder, and the
one-line refusals that leave nothing behind."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models.portrait import FAKE_CONFIG, PortraitOutputs, PortraitSegmenter
from toolkit.commands.train_portrait_job import TEST_SEED_OFFSET
from toolkit.data.portraits import UNKNOWN_ATTRIBUTE, PortraitSet, generate_portraits
from toolkit.eval.portrait_eval import evaluate_portraits, prior_baseline
from toolkit.train.portrait_losses import portrait_loss, prior_weight_map, soft_boundary_labels
from toolkit.train.portrait_trainer import (
    PortraitTrainSettings,
    normalise_pixels,
    train_portrait,
    training_prior,
)

CONFIG = dataclasses.replace(FAKE_CONFIG, num_attributes=4)  # the generator's 4 styles
QUICK = ["--config", "fake", "--train-size", "16", "--test-size", "8", "--epochs", "2",
         "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def portraits():
    return generate_portraits(16, 0, 32, 48, workers=1)


def settings(**changes):
    return PortraitTrainSettings(**{"epochs": 2, "batch_size": 8, "seed": 3, **changes})


def full_loss(model: PortraitSegmenter, data: PortraitSet) -> float:
    """The training loss on the whole set as one batch (batch-norm on batch statistics:
    after a few steps the running averages still remember their initial values)."""
    with torch.no_grad():
        out = copy.deepcopy(model).train().forward_train(normalise_pixels(data.images))
        loss, _ = portrait_loss(out.logits, out.attributes, soft_boundary_labels(data.masks, 4),
                                prior_weight_map(data.masks), data.attributes, 0.1)
    return float(loss)


def test_training_lowers_the_loss_and_seeds_repeat(portraits):
    torch.manual_seed(3)
    before = full_loss(PortraitSegmenter(CONFIG), portraits)  # the trainer's seeded init
    model, history = train_portrait(CONFIG, portraits, settings(epochs=4))
    assert not model.training and history["steps"] == 8 and history["threads"] == 1
    losses = [epoch["loss"] for epoch in history["epochs"]]
    assert losses[-1] < losses[0]
    assert full_loss(model, portraits) < before
    again, _ = train_portrait(CONFIG, portraits, settings(epochs=4))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    other, _ = train_portrait(CONFIG, portraits, settings(epochs=1, seed=4))
    assert not torch.equal(other.head.weight, model.head.weight)


def test_extra_loss_hook_sees_the_batch_and_adds_its_value(portraits):
    calls = []

    def constant(outputs, images):
        calls.append((outputs.logits.shape, images.shape))
        return outputs.logits.sum() * 0 + 1.5  # shifts the loss, not the gradient

    plain, plain_history = train_portrait(CONFIG, portraits, settings(epochs=1))
    hooked, history = train_portrait(CONFIG, portraits, settings(epochs=1), extra_loss=constant)
    assert calls == [((8, 3, 32, 48), (8, 3, 32, 48))] * 2
    epoch, plain_epoch = history["epochs"][0], plain_history["epochs"][0]
    assert epoch["extra"] == 1.5
    assert epoch["loss"] == pytest.approx(plain_epoch["loss"] + 1.5, abs=1e-6)
    assert torch.equal(hooked.head.weight, plain.head.weight)


def test_prior_is_mirrored_with_flips():
    masks = torch.zeros(2, 1, 4, 6, dtype=torch.uint8)
    masks[:, :, :, :2] = 1  # people always on the left
    masks[1, :, :, 2] = 1
    # m_bar per column: 1, 1, 0.5, 0, 0, 0 -> W = 1 + (1 - |2 m - 1|) = 1, 1, 2, 1, 1, 1
    assert training_prior(masks, flip=False)[0, 0, 0].tolist() == [1, 1, 2, 1, 1, 1]
    assert training_prior(masks, flip=True)[0, 0, 0].tolist() == [1, 1, 1.5, 1.5, 1, 1]


def hand_made_set():
    """Three 8x8 images whose channel 0 holds the 'prediction' and pixel (0, 0) of
    channel 1 the predicted hair style."""
    truth = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    truth[0, 0, 2:6, 2:6] = 1
    images[0, 0, 2:6, 3:7] = 255  # the truth's square moved one column right
    truth[1, 0, 1:7, 1:7] = 1  # image 1: the person missed entirely
    images[0, 1, 0, 0], images[2, 1, 0, 0] = 1, 0  # styles: right, (unknown), wrong
    attributes = torch.tensor([1, UNKNOWN_ATTRIBUTE, 2])
    return PortraitSet(images, truth, attributes, ("a", "b", "c", "d"), "hand-made")


class ChannelModel(torch.nn.Module):
    def forward(self, x):
        person = (x[:, :1] > 127).float()
        logits = torch.cat([torch.zeros_like(person), 10 * (2 * person - 1),
                            torch.zeros_like(person)], dim=1)
        return PortraitOutputs(logits, 5 * torch.eye(4)[x[:, 1, 0, 0].long()])


def test_evaluation_matches_the_hand_computation():
    data = hand_made_set()
    metrics = evaluate_portraits(ChannelModel(), data, band_width=1, tolerance=0.5,
                                 batch_size=2, preprocess=lambda p: p.float())
    # Image 0: person IoU 12/20, background IoU 44/52; in the truth's 1-pixel band
    # (32 pixels) person 8/16 and background 16/24; exact contour matches 6 of 12 each way.
    # Image 1: person 0/36, background 28/64; band (48 pixels) 0/20 and 28/48; F = 0.
    # Image 2: no person anywhere: every score is 1.
    assert metrics["miou"] == pytest.approx(((0.6 + 44 / 52) / 2 + 14 / 64 + 1) / 3)
    assert metrics["band_iou"] == pytest.approx((7 / 12 + 7 / 24 + 1) / 3)
    assert metrics["boundary_f"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert metrics["boundary_recall"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert metrics["attribute_accuracy"] == 0.5  # 1 right of the 2 known styles
    assert metrics["images"] == 3 and metrics["threshold"] == 0.5
    # Within 2 pixels the moved square's contour matches everywhere.
    loose = evaluate_portraits(ChannelModel(), data, band_width=1, tolerance=2.0,
                               preprocess=lambda p: p.float())
    assert loose["boundary_f"] == pytest.approx((1 + 0 + 1) / 3)
    # A callable giving the probability map directly: same masks, no attribute head.
    maps = evaluate_portraits(lambda x: x[:, :1] / 255, data, band_width=1, tolerance=0.5,
                              preprocess=lambda p: p.float())
    assert maps["miou"] == metrics["miou"] and maps["attribute_accuracy"] is None


def test_prior_baseline_by_hand():
    data = hand_made_set()
    # Two of three training masks hold image 0's square: the prior is that square.
    train = torch.stack([data.masks[0], data.masks[0], data.masks[2]])
    baseline = prior_baseline(train, data, band_width=1)
    # Image 0 exact (1); image 1: person 16/36, background 28/48; image 2: person 0/16,
    # background 48/64.
    assert baseline["miou"] == pytest.approx((1 + (16 / 36 + 28 / 48) / 2 + 48 / 128) / 3)


def test_cli_artifact_loads_back_to_the_same_outputs(toolkit_cli, tmp_path, portraits):
    out, report = tmp_path / "seg", tmp_path / "seg.json"
    result = toolkit_cli("train", "portrait", *QUICK, "--out", out, "--json", report)
    assert result.code == 0, result.err
    assert "GENERATED data" in result.out and "mIoU" in result.out
    manifest = json.loads(report.read_text())
    saved = json.loads((out / "toolkit.json").read_text())
    assert saved["family"] == "portrait" and saved["data"]["generated"] is True
    assert saved["data"]["description"] == "generated data: synthetic portraits"
    assert saved["data"]["train"]["sha256"] == portraits.sha256
    assert saved["config"]["num_attributes"] == 4 and saved["metrics"] == manifest["metrics"]
    loaded = models.load_model(str(out))
    test = generate_portraits(8, TEST_SEED_OFFSET, 32, 48, workers=1)
    assert saved["data"]["test"]["sha256"] == test.sha256
    again = evaluate_portraits(loaded.module, test)
    for key in ("miou", "band_iou", "boundary_f", "attribute_accuracy"):
        assert again[key] == pytest.approx(saved["metrics"]["test"][key], abs=1e-9), key
    # The library with the same settings gives the same network, output for output.
    model, _ = train_portrait(CONFIG, portraits, settings(seed=0))
    x = loaded.vision.normalise(loaded.vision.images(2, 0))
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
    assert torch.equal(loaded.vision.images(16, 0).sort(0).values,
                       portraits.images.float().sort(0).values)  # the stored calibration


def _folder(root, count=6):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png")
        mask = np.zeros((40, 50), np.uint8)
        mask[10:35, 15:20 + 4 * i] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def test_user_folder_trains_with_a_seeded_split(toolkit_cli, tmp_path):
    out, report = tmp_path / "seg", tmp_path / "r.json"
    result = toolkit_cli("train", "portrait", "--dataset", _folder(tmp_path / "data"),
                         "--config", "fake", "--epochs", "1", "--test-size", "2", "--quiet",
                         "--out", out, "--json", report)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())["data"]
    assert data["generated"] is False and "GENERATED" not in result.out
    assert (data["train"]["count"], data["test"]["count"]) == (4, 2)
    assert json.loads(report.read_text())["metrics"]["test"]["attribute_accuracy"] is None
    assert models.load_model(str(out)).module.config.height == 32


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "{tmp}/nowhere"], ["nowhere", "not a folder"]),
    (["--config", "portrait-999"], ["invalid choice", "portrait-999"]),
    (["--lr", "0"], ["--lr"]),
    (["--width-mult", "9"], ["--width-mult"]),
])
def test_bad_inputs_are_one_line_and_write_nothing(toolkit_cli, tmp_path, argv, words):
    out = tmp_path / "seg"
    argv = [a.format(tmp=tmp_path) for a in argv]
    result = toolkit_cli("train", "portrait", *QUICK, *argv, "--out", out)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1
    for word in words:
        assert word in result.err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(toolkit_cli, tmp_path):
    out = tmp_path / "seg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = toolkit_cli("train", "portrait", *QUICK, "--out", out)
    assert result.code == 2 and "--overwrite" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["seg"]
    assert (out / "keep.txt").read_text() == "mine"
