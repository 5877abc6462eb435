"""Fashion-MNIST (Xiao et al., arXiv 1708.07747) from Debian's `dataset-fashion-mnist`:
60,000 training and 10,000 test images, 28x28 grey, 10 classes, as IDX files.

In models/ (not toolkit/data) because a trained V-MoE artifact draws its calibration and
test images from here when it is loaded, and models/ imports nothing above it.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

from models.errors import ModelError

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
# Per-pixel mean and std of the training images, in [0, 1].
MEAN, STD = (0.2860,), (0.3530,)
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def available(root: Path = ROOT) -> bool:
    return all((root / name).is_file() for pair in _FILES.values() for name in pair)


def load_split(split: str, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 1, 28, 28], labels int64 [N]) of "train" or "test"."""
    root = ROOT if root is None else root
    key = (str(root), split)
    if key not in _CACHE:
        images_file, labels_file = (root / name for name in _FILES[split])
        for path in (images_file, labels_file):
            if not path.is_file():
                raise ModelError(f"Fashion-MNIST file {path} is missing: install it with "
                                 "`apt-get install dataset-fashion-mnist` (as root)")
        images = _idx(images_file, offset=16).reshape(-1, 1, 28, 28)
        labels = _idx(labels_file, offset=8).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise ModelError(f"{images_file} holds {images.shape[0]} images but "
                             f"{labels_file} {labels.shape[0]} labels: reinstall the package")
        _CACHE[key] = torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
    return _CACHE[key]


def _idx(path: Path, offset: int) -> np.ndarray:
    try:
        data = gzip.open(path).read()
    except (OSError, EOFError) as exc:
        raise ModelError(f"{path} is not a readable gzip IDX file ({exc}): reinstall "
                         "dataset-fashion-mnist") from None
    return np.frombuffer(data, np.uint8, offset=offset)


def data_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def sample(split: str, count: int, seed: int) -> torch.Tensor:
    """`count` raw-pixel images (float 0..255) of `split`, drawn without replacement."""
    images, _ = load_split(split)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    return images[order[:count]].float()
