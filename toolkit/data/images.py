"""Labelled image data sets for training: Fashion-MNIST (Debian package) or a user's
folder with one subfolder per class. Images stay raw uint8 [N, C, H, W]; `normalise`
maps them to what the model takes, (x / 255 - mean) / std.

The held-out split (`val`) is carved from the training images with a seed: the
super-class clustering reads the dense model's confusions there, never on the test set.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch

from models import fashion_mnist
from models.errors import ModelError
from toolkit.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# A class needs images in training and, usually, in the 10% validation and test splits.
MIN_IMAGES_PER_CLASS = 5
# A photo of 8192 x 8192 is far beyond any model input here; a file claiming more pixels is
# refused before decoding, as a decompression bomb (a small file that expands to GBs) would
# otherwise fill memory. PIL's own limit only warns below twice its 89M pixels.
MAX_IMAGE_PIXELS = 8192 * 8192
Split = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class ImageData:
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # for reports: where the images came from
    # sha256 of the source training images (uint8 bytes) then labels (int64 bytes), all of
    # them, before the held-out split and --train-limit: names the data set.
    sha256: str
    # sha256 of the exact train, val and test splits used (they vary with seed and limit).
    splits_sha256: str

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std


def split_off(images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int
              ) -> tuple[Split, Split]:
    """(kept, held out): a seeded `fraction` of the rows held out."""
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(round(fraction * images.shape[0])))
    held, kept = order[:cut], order[cut:]
    return (images[kept], labels[kept]), (images[held], labels[held])


def fashion_mnist_data(seed: int = 0, train_limit: int | None = None,
                       val_fraction: float = 0.1) -> ImageData:
    try:
        images, labels = fashion_mnist.load_split("train")
        test = fashion_mnist.load_split("test")
    except ModelError as exc:
        raise UserError(str(exc)) from None
    train, val = split_off(images, labels, val_fraction, seed)
    if train_limit is not None:
        train = (train[0][:train_limit], train[1][:train_limit])
    return ImageData(train, val, test, fashion_mnist.CLASSES, fashion_mnist.MEAN,
                     fashion_mnist.STD, "Fashion-MNIST (Debian dataset-fashion-mnist)",
                     _digest((images, labels)), _digest(train, val, test))


def folder_data(root: Path, size: int, channels: int, seed: int = 0,
                train_limit: int | None = None, held_out: float = 0.1) -> ImageData:
    """A folder with one subfolder per class; 10% held out for validation, 10% for test."""
    if not root.is_dir():
        raise UserError(f"--dataset {root} is not a directory: pass fashion-mnist or a "
                        "folder with one subfolder of images per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(class_dirs) < 2:
        raise UserError(f"--dataset {root} has {len(class_dirs)} class subfolder(s): a "
                        "classifier needs at least two (one subfolder of images per class)")
    pixels, labels = [], []
    for label, folder in enumerate(class_dirs):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"class folder {folder} holds no images "
                            f"({', '.join(IMAGE_SUFFIXES)}): add some or remove it")
        if len(files) < MIN_IMAGES_PER_CLASS:
            raise UserError(f"class folder {folder} holds {len(files)} image(s), fewer than "
                            f"{MIN_IMAGES_PER_CLASS} (training plus the validation and test "
                            "splits need them): add images or remove the folder")
        for path in files:
            pixels.append(_read_image(path, size, channels))
            labels.append(label)
    images = torch.from_numpy(np.stack(pixels))
    targets = torch.tensor(labels, dtype=torch.long)
    rest, test = split_off(images, targets, held_out, seed)
    train, val = split_off(*rest, held_out / (1 - held_out), seed + 1)
    if train_limit is not None:
        train = (train[0][:train_limit], train[1][:train_limit])
    mean = tuple(float(m) for m in (train[0].float() / 255).mean(dim=(0, 2, 3)))
    std = tuple(max(float(s), 1e-3) for s in (train[0].float() / 255).std(dim=(0, 2, 3)))
    return ImageData(train, val, test, tuple(d.name for d in class_dirs), mean, std,
                     f"image folder {root.name} ({len(labels)} images)",
                     _digest((images, targets)), _digest(train, val, test))


def _read_image(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize(
                (size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path} is not a readable image ({exc.__class__.__name__}): "
                        "remove it or replace it with a PNG/JPEG") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def open_image(path: Path):
    """`PIL.Image.open(path)`, refused in one line when it claims more than
    MAX_IMAGE_PIXELS (checked from the header, before any pixel is decoded)."""
    from PIL import Image

    try:
        image = Image.open(path)
    except Image.DecompressionBombError:
        raise UserError(f"{path} claims more pixels than PIL allows (a decompression bomb?): "
                        "downscale it or remove it") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise UserError(f"{path} is {width}x{height} pixels, over the cap of "
                        f"{MAX_IMAGE_PIXELS} (a decompression bomb?): downscale it below "
                        "8192x8192 or remove it")
    return image


def _digest(*splits: Split) -> str:
    digest = hashlib.sha256()
    for images, labels in splits:
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return digest.hexdigest()
