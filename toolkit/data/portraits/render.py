"""Rasterising polygons for the synthetic portraits: antialiased coverage for the image,
an exact inside test for the mask, and "over" compositing.

Pixel (row i, column j) covers [j, j+1) x [i, i+1); its centre is (j + 0.5, i + 0.5).
    coverage(pixel) = (1 / S^2) * #{sub-pixel centres inside the polygons}, S = 4
    mask(pixel)     = [pixel centre inside the union of the person's polygons]
PIL fills a polygon's pixels whose centres (integer coordinates in PIL) lie inside it,
so a point u maps to PIL coordinate S*u - 0.5 on the supersampled canvas and u - 0.5 on
the mask canvas. Each layer is drawn only inside its bounding box, which keeps the
supersampled canvases small.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4


def bounding_box(polygons: list[np.ndarray], height: int, width: int
                 ) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the pixels the polygons can touch, clipped to the image."""
    points = np.concatenate(polygons)
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return None if x0 >= x1 or y0 >= y1 else (int(x0), int(y0), int(x1), int(y1))


def coverage(polygons: list[np.ndarray], box: tuple[int, int, int, int]) -> np.ndarray:
    """float32 [y1 - y0, x1 - x0]: the fraction of each pixel the polygons cover,
    from S x S samples per pixel."""
    x0, y0, x1, y1 = box
    canvas = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    shift = np.array([x0, y0], dtype=np.float64)
    for polygon in polygons:
        draw.polygon(_pil_points((polygon - shift) * SUPERSAMPLE - 0.5), fill=255)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255


def inside(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """bool [H, W]: pixel centres inside the union of the polygons."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon(_pil_points(polygon - 0.5), fill=1)
    return np.asarray(canvas, dtype=bool)


def _pil_points(points: np.ndarray) -> list[tuple[float, float]]:
    # Far-away vertices (the torso runs off the image) are clamped: PIL's scanline fill
    # is exact for them, but huge coordinates waste its edge table's precision.
    return [tuple(p) for p in np.clip(points, -1e5, 1e5).tolist()]


def composite(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray,
              box: tuple[int, int, int, int]) -> None:
    """canvas <- alpha * colour + (1 - alpha) * canvas inside `box` (in place)."""
    x0, y0, x1, y1 = box
    region = canvas[y0:y1, x0:x1]
    region += alpha[..., None] * (colour - region)


def pixel_grid(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the pixel centres inside `box`, each [h, w] float32."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    return np.broadcast_to(xs, (y1 - y0, x1 - x0)), np.broadcast_to(ys[:, None],
                                                                    (y1 - y0, x1 - x0))
