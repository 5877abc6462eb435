"""`toolkit compress --method channel-prune` on portrait models: the artifact loads back as
the network rebuilt independently from the kept channels the manifest lists, carries
before/after mask metrics and agreement, can be pruned again; bad input is one line,
exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from models import create_model, load_model
from models.families.portrait import portrait_loaded
from models.portrait import PortraitSegmenter
from models.portrait_surgery import expansion_widths, prune_expansion_channels
from toolkit.artifacts import save_model_artifact
from toolkit.data.portraits import generate_portraits

torch.set_num_threads(1)
FAST = ["--calib-samples", "16", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def pruned(toolkit_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "fake-portrait-cp50"
    report = out.with_suffix(".json")
    result = toolkit_cli("compress", "--model", "fake-portrait", "--method", "channel-prune",
                         "--criterion", "bn-scale", "--sparsity", "0.5", "--out", out,
                         "--json", report, *FAST)
    assert result.code == 0, result.err
    return out, json.loads(report.read_text()), result


def test_artifact_is_the_independently_rebuilt_network(pruned):
    out, manifest, result = pruned
    loaded = load_model(str(out))
    assert isinstance(loaded.module, PortraitSegmenter)
    blocks = manifest["pruning"]["blocks"]
    assert expansion_widths(loaded.module) == {b["name"]: b["hidden_after"] for b in blocks}
    assert all(b["hidden_after"] % 8 == 0 for b in blocks)
    # bn-scale without recovery: the fake model with exactly the listed channels kept.
    expected = prune_expansion_channels(create_model("fake-portrait").module,
                                        {b["name"]: b["kept"] for b in blocks}).eval()
    x = loaded.vision.normalise(loaded.vision.images(4, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), expected(x), rtol=0, atol=0)
    assert manifest["family"] == "portrait" and manifest["method"]["method"] == "channel-prune"
    assert manifest["pruning"]["params_after"] == sum(
        p.numel() for p in loaded.module.parameters()) < manifest["pruning"]["params_before"]
    assert (out / "calibration.safetensors").is_file()
    assert "channel-prune" in result.out and "expansion widths" in result.out


def test_manifest_has_mask_metrics_and_agreement(pruned):
    _, manifest, _ = pruned
    before, after = manifest["metrics"]["before"], manifest["metrics"]["after"]
    for key in ("miou", "band_iou", "boundary_f"):
        assert 0 <= before[key] <= 1 and 0 <= after[key] <= 1
    assert 0 <= after["mask_iou_to_original"] <= 1 and 0 <= after["pixel_agreement"] <= 1
    assert after["kl_to_original"] >= 0 and "mask_iou_to_original" not in before
    held_out = manifest["metrics"]["held_out"]
    assert "synthetic portraits" in held_out["source"] and held_out["count"] == 64
    # Calibration and held-out portraits are different images.
    assert held_out["sha256"] != manifest["calibration"]["sha256"]


def test_a_pruned_artifact_prunes_again_with_kd(pruned, toolkit_cli, tmp_path):
    out, manifest, _ = pruned
    again = tmp_path / "again"
    report = tmp_path / "again.json"
    result = toolkit_cli("compress", "--model", out, "--method", "channel-prune",
                         "--sparsity", "0.5", "--recover", "kd", "--recover-steps", "2",
                         "--round-to", "4", "--out", again, "--json", report, *FAST)
    assert result.code == 0, result.err
    second = json.loads(report.read_text())
    first_widths = [b["hidden_after"] for b in manifest["pruning"]["blocks"]]
    assert [b["hidden_before"] for b in second["pruning"]["blocks"]] == first_widths
    assert all(b["hidden_after"] < b["hidden_before"] or b["hidden_before"] <= 4
               for b in second["pruning"]["blocks"])
    assert second["pruning"]["recovery"]["steps"] == 2
    assert load_model(str(again)).module.config.hidden_channels == tuple(
        b["hidden_after"] for b in second["pruning"]["blocks"])


@pytest.mark.parametrize("argv, words", [
    (["--model", "fake-portrait", "--sparsity", "1.5"], ["sparsity", "(0, 1)"]),
    (["--model", "fake-portrait", "--sparsity", "0"], ["sparsity"]),
    (["--model", "fake-portrait", "--criterion", "frequency"], ["criterion", "taylor"]),
    (["--model", "fake-vmoe"], ["portrait segmenter", "VisionMoE", "fake-portrait"]),
    (["--model", "fake-cnn"], ["portrait segmenter", "fake-portrait"]),
    (["--model", "fake-llama"], ["portrait segmenter", "language model", "fake-portrait"]),
])
def test_refusals_are_one_line_exit_2_nothing_written(toolkit_cli, tmp_path, argv, words):
    out = tmp_path / "out"
    result = toolkit_cli("compress", "--method", "channel-prune", *argv, "--out", out, *FAST)
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    for word in words:
        assert word in result.err
    assert not out.exists()


def test_other_methods_on_a_portrait_name_channel_prune(toolkit_cli, tmp_path):
    result = toolkit_cli("compress", "--model", "fake-portrait", "--method", "drop-experts",
                         "--out", tmp_path / "out", *FAST)
    assert result.code == 2 and "--method channel-prune" in result.err


def test_a_model_trained_on_a_folder_needs_that_folder(toolkit_cli, tmp_path):
    module = create_model("fake-portrait").module
    data = generate_portraits(2, 0, 32, 48)
    source = tmp_path / "folder-trained"
    save_model_artifact(source, portrait_loaded(module, samples=data.images), {"data": {
        "generated": False, "train": {"source": "portrait folder /photos (2 pairs)",
                                      "seed": 0}}})
    result = toolkit_cli("compress", "--model", source, "--method", "channel-prune",
                         "--out", tmp_path / "out", *FAST)
    assert result.code == 2 and "--calib-data" in result.err
    assert "portrait folder /photos" in result.err and not (tmp_path / "out").exists()


def test_calibration_folder_is_split_into_calibration_and_held_out(toolkit_cli, tmp_path):
    from PIL import Image

    data = generate_portraits(6, 3, 32, 48)
    folder = tmp_path / "photos"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(len(data)):
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(
            folder / "images" / f"{i:03d}.png")
        Image.fromarray(data.masks[i, 0].numpy() * 255).save(folder / "masks" / f"{i:03d}.png")
    report = tmp_path / "r.json"
    result = toolkit_cli("compress", "--model", "fake-portrait", "--method", "channel-prune",
                         "--criterion", "l1-filter", "--calib-data", folder, "--out",
                         tmp_path / "out", "--json", report, "--threads", "1", "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads(report.read_text())
    calib, held_out = manifest["calibration"], manifest["metrics"]["held_out"]
    assert "portrait folder" in calib["source"] and "portrait folder" in held_out["source"]
    assert (calib["count"], held_out["count"]) == (4, 2)
