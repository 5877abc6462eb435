"""Portrait data: the synthetic generator (deterministic per seed, masks that match the
drawn polygons under an independent point-in-polygon test, labelled as generated) and a
user's folder of image/mask pairs (pairing, mask formats, seeded split, bad folders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.portrait import PortraitConfig
from toolkit.data.portraits import (
    HAIR_STYLES,
    UNKNOWN_ATTRIBUTE,
    draw_portrait,
    generate_portraits,
    load_portrait_folder,
)
from toolkit.data.portraits.generator import bundled_backgrounds
from toolkit.data.portraits.render import inside
from toolkit.errors import UserError


@pytest.fixture(scope="module")
def portraits():
    return generate_portraits(12, seed=3, height=64, width=64)


def test_same_seed_same_portraits_whatever_the_count_or_threads(portraits):
    again = generate_portraits(12, seed=3, height=64, width=64, workers=1)
    for field in ("images", "masks", "attributes"):
        assert torch.equal(getattr(portraits, field), getattr(again, field)), field
    first = generate_portraits(4, seed=3, height=64, width=64, workers=2)
    assert torch.equal(first.images, portraits.images[:4])
    other = generate_portraits(4, seed=4, height=64, width=64)
    assert not torch.equal(other.images, first.images)


def test_set_shapes_labels_and_source(portraits):
    assert portraits.images.shape == (12, 3, 64, 64) and portraits.images.dtype == torch.uint8
    assert portraits.masks.shape == (12, 1, 64, 64)
    assert set(portraits.masks.unique().tolist()) == {0, 1}
    assert portraits.attribute_names == HAIR_STYLES
    assert set(portraits.attributes.tolist()) <= set(range(len(HAIR_STYLES)))
    assert "synthetic portraits (generated, seed 3" in portraits.source
    # The model's attribute head has one output per generated hair style.
    assert PortraitConfig().num_attributes == len(HAIR_STYLES)
    landscape = generate_portraits(2, seed=0, height=144, width=256)
    assert landscape.images.shape == (2, 3, 144, 256)


def test_every_hair_style_is_drawn():
    styles = generate_portraits(40, seed=0, height=32, width=32).attributes
    assert set(styles.tolist()) == set(range(len(HAIR_STYLES)))


def point_in_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd ray casting, independent of PIL: is (x, y) inside `polygon`?"""
    result = np.zeros(x.shape, dtype=bool)
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for ax, ay, bx, by in zip(x1, y1, x2, y2, strict=True):
        if ay == by:
            continue
        crosses = (ay > y) != (by > y)
        result ^= crosses & (x < (bx - ax) * (y - ay) / (by - ay) + ax)
    return result


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_mask_is_the_drawn_person(index):
    sample = draw_portrait(np.random.default_rng([7, index]), 96, 128, bundled_backgrounds())
    ys, xs = np.mgrid[0:96, 0:128] + 0.5
    union = np.zeros((96, 128), dtype=bool)
    for polygon in sample.polygons:
        union |= point_in_polygon(xs, ys, polygon)
    # Same rule, different arithmetic: only a centre lying on an edge could differ.
    assert int((sample.mask != union).sum()) <= 2
    assert 0.05 < union.mean() < 0.95
    cx, cy = sample.head_centre
    assert sample.mask[int(cy), int(cx)], "the head centre is person"
    (x0, y0), (x1, y1) = np.concatenate(sample.polygons).min(0), np.concatenate(
        sample.polygons).max(0)
    away = [(x, y) for x, y in ((0, 0), (127, 0), (0, 95), (127, 95))
            if x + 1 < x0 or x > x1 or y + 1 < y0 or y > y1]
    assert away, "the person never fills the whole frame"
    for x, y in away:
        assert not sample.mask[y, x], "a corner away from the person is background"


def test_a_polygon_mask_has_the_polygon_area():
    # A tilted square of side 20 (area 400) and a circle of radius 15 (area 706.86).
    angle = 0.3
    square = np.array([[-10, -10], [10, -10], [10, 10], [-10, 10]], dtype=float)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    circle = np.stack([15 * np.cos(t), 15 * np.sin(t)], axis=1)
    for polygon, area in ((square @ rotation + 32.3, 400.0), (circle + 31.7, np.pi * 225)):
        counted = int(inside([polygon], 64, 64).sum())
        # Pixel-centre sampling errs by well under half the perimeter (in pixels).
        assert abs(counted - area) < 0.1 * np.sqrt(area) * 4, (counted, area)


def test_image_shows_the_person_over_a_photo():
    sample = draw_portrait(np.random.default_rng([1, 0]), 64, 64, bundled_backgrounds())
    assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
    assert 0.05 < sample.mask.mean() < 0.95
    assert sample.image.std() > 10  # a textured photo, not a flat colour


# --- a user's folder -------------------------------------------------------------------

def write_pair(root, stem, size=(20, 16), mask_size=None, mask_name=None, levels=(0, 255)):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(ord(stem[0]))
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        root / "images" / f"{stem}.jpg")
    mw, mh = mask_size or size
    mask = np.full((mh, mw), levels[0], dtype=np.uint8)
    mask[mh // 4: 3 * mh // 4, mw // 4: 3 * mw // 4] = levels[1]
    Image.fromarray(mask).save(root / "masks" / (mask_name or f"{stem}.png"))


def test_folder_pairs_images_with_masks(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b", levels=(0, 1))
    write_pair(tmp_path, "c", mask_name="c_matte.png")
    data = load_portrait_folder(tmp_path, 16, 20)
    assert data.images.shape == (3, 3, 16, 20) and data.masks.shape == (3, 1, 16, 20)
    expected = np.zeros((16, 20), dtype=np.uint8)
    expected[4:12, 5:15] = 1
    for mask in data.masks[:, 0].numpy():
        assert np.array_equal(mask, expected)
    assert (data.attributes == UNKNOWN_ATTRIBUTE).all() and str(tmp_path) in data.source
    resized = load_portrait_folder(tmp_path, 32, 48)
    assert resized.masks.shape == (3, 1, 32, 48)
    assert resized.masks[0, 0, 16, 24] == 1 and resized.masks[0, 0, 0, 0] == 0


def test_held_out_split_is_seeded_and_disjoint(tmp_path):
    for stem in "abcdefghij":
        write_pair(tmp_path, stem, size=(8, 8))
    data = load_portrait_folder(tmp_path, 16, 16)
    # Tell the pictures apart by their bytes.
    key = lambda s: {bytes(img.numpy().tobytes()) for img in s.images}  # noqa: E731
    kept, held = data.split(0.2, seed=1)
    kept_again, held_again = data.split(0.2, seed=1)
    assert len(held) == 2 and len(kept) == 8 and key(held) == key(held_again)
    assert not key(kept) & key(held) and key(kept) | key(held) == key(data)
    assert "held out (split seed 1)" in held.source
    with pytest.raises(UserError, match="between 0 and 1"):
        data.split(1.5, seed=0)


def test_missing_mask_names_the_image(tmp_path):
    write_pair(tmp_path, "a")
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(UserError, match=r"images/a\.jpg has no mask"):
        load_portrait_folder(tmp_path, 16, 16)


def test_mask_of_another_size_names_both_sizes(tmp_path):
    write_pair(tmp_path, "a", size=(20, 16), mask_size=(10, 8))
    with pytest.raises(UserError, match="is 10x8 but its image .* is 20x16"):
        load_portrait_folder(tmp_path, 16, 16)


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(UserError, match="is empty"):
        load_portrait_folder(tmp_path, 16, 16)
    with pytest.raises(UserError, match="no images/ subfolder"):
        load_portrait_folder(tmp_path / "nowhere", 16, 16)


def test_unreadable_image_is_named(tmp_path):
    write_pair(tmp_path, "a")
    (tmp_path / "images" / "a.jpg").write_bytes(b"not a picture")
    with pytest.raises(UserError, match=r"cannot read .*a\.jpg"):
        load_portrait_folder(tmp_path, 16, 16)
