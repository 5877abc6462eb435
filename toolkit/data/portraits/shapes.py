"""Outlines of a procedurally drawn person, as polygons ([K, 2] arrays of x, y).

Everything is built in head units: the head's centre is (0, 0), its half-height is 1,
y points down (image convention). `generator.py` scales, tilts and places the result.
Hair styles differ in their outlines, which is what the attribute head learns and what
makes the boundary hard: short (a cap hugging the skull), long (a drape past the
shoulders with a jagged tip), curly (a lobed volume, 14-26 lobes) and bun (a cap and a
knot on top); long and curly hair also grow thin strands, 0.3-1.2 pixels wide, out of
their outline: the fine detail a boundary-sensitive model must keep.
"""

from __future__ import annotations

import numpy as np

HAIR_STYLES = ("short", "long", "curly", "bun")


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float,
        n: int = 32) -> np.ndarray:
    t = np.linspace(start, stop, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def bezier(p0, p1, p2, n: int = 12) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 with control point p1."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def head(aspect: float, jaw: float) -> np.ndarray:
    """An egg: an ellipse of half-width `aspect`, narrowed by `jaw` towards the chin."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    y = np.sin(t)
    x = aspect * np.cos(t) * (1 - jaw * np.clip(y, 0, None) ** 2)
    return np.stack([x, y], axis=1)


def ears(aspect: float) -> list[np.ndarray]:
    return [ellipse(side * aspect * 0.97, 0.05, 0.13, 0.22, 24) for side in (-1, 1)]


def neck(width: float, bottom: float) -> np.ndarray:
    """From under the jaw down into the torso (hidden under the collar)."""
    return np.array([[-width, 0.4], [width, 0.4], [width * 1.08, bottom],
                     [-width * 1.08, bottom]])


def torso(shoulders: float, drop: float, collar: float, collar_depth: float) -> np.ndarray:
    """Shoulders and chest down far past the image's bottom edge; the neckline dips by
    `collar_depth` in the middle (a round or V neck shows skin)."""
    top = 1.25
    right = np.concatenate([
        bezier((collar, top), (shoulders * 0.75, top + 0.05), (shoulders, top + drop)),
        [[shoulders + 0.15, 40.0]]])
    left = right[::-1] * np.array([-1, 1])
    neckline = bezier((-collar, top), (0, top + 2 * collar_depth), (collar, top), 9)
    return np.concatenate([right, left, neckline[1:-1]])


def hair_cap(aspect: float, fringe: float, parting: float, rng: np.random.Generator
             ) -> np.ndarray:
    """Hair over the top of the skull: an arc a little outside the head, closed by a
    hairline that rises from the temples to `fringe` (parted off-centre by `parting`)."""
    grow, below = rng.uniform(1.04, 1.12), rng.uniform(0.1, 0.35)
    outer = arc(0, 0, aspect * grow, grow, np.pi - below, 2 * np.pi + below, 40)
    x_end, y_end = outer[-1]
    t = np.linspace(0, 1, 24)
    x = x_end * np.cos(np.pi * t) + parting * np.sin(np.pi * t) * 0.3
    y = y_end + (fringe - y_end) * np.sin(np.pi * t) ** 0.5
    y += rng.uniform(0, 0.06, size=t.size) * np.sin(np.pi * t)  # a ragged fringe
    return np.concatenate([outer, np.stack([x, y], axis=1)[1:-1]])


def long_drape(aspect: float, length: float, spread: float, rng: np.random.Generator
               ) -> np.ndarray:
    """Hair behind the head falling past the shoulders, ending in uneven locks."""
    top = arc(0, -0.05, aspect * 1.15, 1.12, 1.5 * np.pi, 2 * np.pi + 0.3, 20)
    side_top = top[-1]
    bottom_right = (aspect * spread, length)
    right = np.concatenate([top, bezier(side_top, (side_top[0] * 1.15, length * 0.5),
                                        bottom_right, 10)[1:]])
    locks = int(rng.integers(14, 26))
    x = np.linspace(bottom_right[0], -bottom_right[0], 2 * locks + 1)[1:-1]
    y = length + np.where(np.arange(x.size) % 2 == 0, rng.uniform(0.05, 0.45, x.size),
                          rng.uniform(-0.12, 0.0, x.size))
    left = right[::-1] * np.array([-1, 1])
    return np.concatenate([right, np.stack([x, y], axis=1), left[:-1]])


def curly_volume(aspect: float, size: float, cut: float, rng: np.random.Generator
                 ) -> np.ndarray:
    """A lobed outline around the head: radius modulated by two sinusoids (14-26 lobes
    plus a slower wobble) and flattened below y = `cut`."""
    t = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    lobes = rng.integers(14, 27)
    r = size * (1 + rng.uniform(0.04, 0.08) * np.sin(lobes * t + rng.uniform(0, 6.3))
                + rng.uniform(0.01, 0.04) * np.sin(rng.integers(3, 6) * t + rng.uniform(0, 6.3)))
    x, y = r * np.cos(t) * aspect * 1.25, -0.15 + r * np.sin(t)
    y = np.minimum(y, cut + 0.05 * np.sin(lobes * 2 * t))
    return np.stack([x, y], axis=1)


def bun(aspect: float, rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(0.3, 0.45)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = radius * (1 + 0.05 * np.sin(int(rng.integers(5, 9)) * t))
    cx, cy = rng.uniform(-0.25, 0.25) * aspect, -1.0 - 0.55 * radius
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def strands(outline: np.ndarray, count: int, unit_px: float, rng: np.random.Generator,
            length: tuple[float, float] = (0.15, 0.6)) -> list[np.ndarray]:
    """Thin bent strands growing outward from random points of `outline` (a closed
    polygon around its centroid), 0.3-1.2 pixels wide at the root, tapering to 20%."""
    if count == 0:
        return []
    centre = outline.mean(axis=0)
    roots = outline[rng.choice(len(outline), size=count, replace=False)]
    out = roots - centre
    angle = np.arctan2(out[:, 1], out[:, 0]) + rng.uniform(-0.5, 0.5, count)
    size = rng.uniform(*length, count)[:, None]
    bend = rng.uniform(-0.6, 0.6, count)[:, None]
    direction = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    across = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
    # Start a little inside the outline so the strand joins the hair.
    start = roots - 0.05 * out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-9)
    tip = roots + size * direction
    middle = (roots + tip) / 2 + bend * size * across
    t = np.linspace(0, 1, 8)[None, :, None]
    lines = ((1 - t) ** 2 * start[:, None] + 2 * (1 - t) * t * middle[:, None]
             + t ** 2 * tip[:, None])  # [count, 8, 2] quadratic Beziers
    widths = rng.uniform(0.3, 1.2, count) / unit_px
    return list(ribbons(lines, widths))


def ribbons(lines: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """[count, 2K, 2] polygons around polylines [count, K, 2], `widths` wide at the start
    tapering to 20% at the end."""
    tangent = np.gradient(lines, axis=1)
    normal = np.stack([-tangent[..., 1], tangent[..., 0]], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
    half = (widths[:, None] / 2 * np.linspace(1, 0.2, lines.shape[1]))[..., None]
    return np.concatenate([lines + half * normal, (lines - half * normal)[:, ::-1]], axis=1)
