"""A user's portrait data set: a folder with `images/` and `masks/` whose files pair up
by stem (images/0001.jpg with masks/0001.png; masks/0001_mask.png and
masks/0001_matte.png, the PFCN naming, are accepted too). Masks are PNG, 0/255 or 0/1
(any other grey levels: person where the value is at least 128). Every pair is resized
to the model's input (bilinear; the mask is resized as a coverage and thresholded at
0.5), as a phone app resizes its camera frame. Hair styles are unknown here, so the
attribute labels are UNKNOWN_ATTRIBUTE and the attribute loss skips them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from toolkit.data.images import open_image
from toolkit.data.portraits.dataset import UNKNOWN_ATTRIBUTE, PortraitSet
from toolkit.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MASK_NAMES = ("{stem}.png", "{stem}_mask.png", "{stem}_matte.png")


def load_portrait_folder(root: str | Path, height: int, width: int) -> PortraitSet:
    """Every image/mask pair under `root`, resized to height x width."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise UserError(f"portrait folder {root} has no {folder.name}/ subfolder: put "
                            "the photos in images/ and their masks (PNG) in masks/")
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"portrait folder {images_dir} is empty: add images "
                        f"({', '.join(IMAGE_SUFFIXES)}) and their masks in {masks_dir}")
    images = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    masks = np.empty((len(paths), 1, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        mask_path = _mask_for(path, masks_dir)
        image, mask = _read(path, "RGB"), _read(mask_path, None)
        if image.size != mask.size:
            raise UserError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                            f"{path} is {image.size[0]}x{image.size[1]} (width x height): "
                            "masks must have their image's size")
        images[i] = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
        masks[i, 0] = _resized_mask(_person(mask), height, width)
    return PortraitSet(images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                       masks=torch.from_numpy(masks),
                       attributes=torch.full((len(paths),), UNKNOWN_ATTRIBUTE,
                                             dtype=torch.int64),
                       attribute_names=(),
                       source=f"portrait folder {root} ({len(paths)} image/mask pairs, "
                              f"resized to {height}x{width})")


def _mask_for(image: Path, masks_dir: Path) -> Path:
    candidates = [masks_dir / name.format(stem=image.stem) for name in MASK_NAMES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"image {image} has no mask: expected {candidates[0]} (or "
                    f"{candidates[1].name}, {candidates[2].name})")


def _read(path: Path, mode: str | None) -> Image.Image:
    try:
        with open_image(path) as image:
            image.load()
            return image.convert(mode) if mode else image.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read {path} as an image ({exc}): replace or remove it") \
            from None


def _person(mask: Image.Image) -> np.ndarray:
    """bool [H, W]: 0/1 masks (palette or grey), 0/255 masks, or grey levels >= 128."""
    if mask.mode not in ("L", "P", "1", "I", "I;16"):
        mask = mask.convert("L")  # RGB(A) masks: their luminance
    values = np.asarray(mask)
    return values == 1 if values.max() <= 1 else values >= 128


def _resized_mask(person: np.ndarray, height: int, width: int) -> np.ndarray:
    if person.shape == (height, width):
        return person.astype(np.uint8)
    coverage = Image.fromarray(person.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR)
    return (np.asarray(coverage) >= 0.5).astype(np.uint8)
