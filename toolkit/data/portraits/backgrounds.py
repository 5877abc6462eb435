"""Backgrounds for the synthetic portraits: random crops of the real photos that ship
inside the scikit-image and scikit-learn wheels (see DATA.md). The files are read from
the installed packages' folders; nothing is ever fetched (skimage.data's loaders would
download some images, so they are not called).

Photos showing a person (skimage's astronaut and camera) are left out: a real person
labelled background would teach the segmenter to miss people.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.errors import UserError

# (package, folder inside it, file names): scenes and textures, no people.
BUNDLED = (
    ("skimage", "data", ("coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                         "hubble_deep_field.jpg", "brick.png", "grass.png", "gravel.png",
                         "coins.png")),
    ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
)


def bundled_photo_paths() -> list[Path]:
    """Paths of the bundled background photos found in the installed packages."""
    paths = []
    for package, folder, names in BUNDLED:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        root = Path(spec.origin).parent / folder
        paths += [root / name for name in names if (root / name).is_file()]
    return paths


class Backgrounds:
    """Decoded photos (RGB) and random crops of them at a target size."""

    def __init__(self, paths: list[Path] | None = None):
        paths = bundled_photo_paths() if paths is None else paths
        if not paths:
            raise UserError("no background photos found: the portrait generator crops the "
                            "photos bundled with scikit-image and scikit-learn; install them "
                            "with `pip install scikit-image scikit-learn`")
        self.paths = paths
        # Each photo at full, half, quarter... size: a crop is resized from the smallest
        # level still larger than the target, where a bilinear resize is 2x cheaper.
        self.pyramids: list[list[Image.Image]] = []
        for path in paths:
            with Image.open(path) as image:
                levels = [image.convert("RGB")]
            while min(levels[-1].size) >= 256:
                levels.append(levels[-1].reduce(2))
            self.pyramids.append(levels)

    @property
    def names(self) -> list[str]:
        return [path.name for path in self.paths]

    def crop(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A float32 [H, W, 3] image in 0..255: a random crop of a random photo with the
        target aspect (35-100% of the largest such crop), flipped half the time,
        defocused a third of the time (portrait-mode blur), brightness varied."""
        levels = self.pyramids[int(rng.integers(len(self.pyramids)))]
        pw, ph = levels[0].size
        largest = min(pw / width, ph / height)
        scale = largest * rng.uniform(0.35, 1.0)
        cw, ch = width * scale, height * scale
        x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
        level = 0
        while level + 1 < len(levels) and scale / 2 ** (level + 1) >= 1:
            level += 1
        photo, f = levels[level], pw / levels[level].size[0]
        image = photo.resize((width, height), Image.Resampling.BILINEAR,
                             box=(x0 / f, y0 / f, min((x0 + cw) / f, photo.size[0]),
                                  min((y0 + ch) / f, photo.size[1])))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 1 / 3:  # down and up again: a cheap defocus
            factor = int(rng.integers(3, 7))
            image = image.resize((max(1, width // factor), max(1, height // factor)),
                                 Image.Resampling.BILINEAR).resize(
                (width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        return pixels * rng.uniform(0.6, 1.2) + rng.uniform(-20, 20, size=3).astype(np.float32)
