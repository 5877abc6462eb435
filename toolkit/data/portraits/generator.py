"""Synthetic portraits with exact masks, generated offline: a procedurally drawn person
(head, ears, face, one of four hair styles, neck, shoulders and torso in a clothing
pattern) over a crop of a real bundled photo (backgrounds.py), with random pose, scale,
position, lighting and sensor noise. Seeded: sample i of seed S is drawn from
numpy.random.default_rng([S, i]) alone, so it does not depend on how many are made.

The mask is exact: a pixel is foreground when its centre lies inside the person's
polygons; the image is antialiased from 4x4 samples per pixel (render.py). The hair
style index (shapes.HAIR_STYLES) is the boundary attribute label of arXiv 1712.08675.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os

import numpy as np
import torch

from toolkit.data.portraits import paints, render, shapes
from toolkit.data.portraits.backgrounds import Backgrounds
from toolkit.data.portraits.dataset import PortraitSet
from toolkit.errors import UserError


@dataclasses.dataclass
class PortraitSample:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]: pixel centre inside the person
    hair_style: int  # index into shapes.HAIR_STYLES
    polygons: list[np.ndarray]  # the person's polygons in pixels ([K, 2] x, y)
    head_centre: tuple[float, float]  # pixels
    head_size: float  # pixels per head unit (the head's half-height)


@dataclasses.dataclass
class Person:
    centre: tuple[float, float]
    size: float
    mirror: float
    tilt: float
    torso_tilt: float
    aspect: float
    style: int
    skin: np.ndarray
    hair: np.ndarray

    def place(self, points: np.ndarray, angle: float) -> np.ndarray:
        """Head units -> pixels: rotate by `angle` about the neck (0, 1), mirror, scale."""
        pivot = np.array([0.0, 1.0])
        c, s = np.cos(angle), np.sin(angle)
        p = (points - pivot) @ np.array([[c, s], [-s, c]]) + pivot
        p = p * np.array([self.mirror, 1.0])
        return p * self.size + np.array(self.centre)


def sample_person(rng: np.random.Generator, height: int, width: int) -> Person:
    size = min(height, width) * rng.uniform(0.1, 0.2)
    return Person(centre=(width * rng.uniform(0.2, 0.8), height * rng.uniform(0.25, 0.55)),
                  size=size, mirror=float(rng.choice([-1.0, 1.0])),
                  tilt=rng.uniform(-0.25, 0.25), torso_tilt=rng.uniform(-0.08, 0.08),
                  aspect=rng.uniform(0.72, 0.85), style=int(rng.integers(len(shapes.HAIR_STYLES))),
                  skin=paints.skin_tone(rng), hair=paints.hair_colour(rng))


def hair_outlines(person: Person, rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(behind the head, over the head, strands) of the person's hair style, head units."""
    a, style = person.aspect, shapes.HAIR_STYLES[person.style]
    cap = shapes.hair_cap(a, rng.uniform(-0.75, -0.35), rng.uniform(-0.5, 0.5), rng)
    behind: list[np.ndarray] = []
    if style == "long":
        behind = [shapes.long_drape(a, rng.uniform(2.2, 3.4), rng.uniform(1.1, 1.6), rng)]
        hairs = shapes.strands(behind[0], int(rng.integers(8, 17)), person.size, rng)
    elif style == "curly":
        behind = [shapes.curly_volume(a, rng.uniform(1.3, 1.6), rng.uniform(0.5, 1.2), rng)]
        hairs = shapes.strands(behind[0], int(rng.integers(6, 15)), person.size, rng,
                               length=(0.1, 0.35))
    else:
        if style == "bun":
            behind = [shapes.bun(a, rng)]
        hairs = shapes.strands(cap[:40], int(rng.integers(0, 5)), person.size, rng,
                               length=(0.1, 0.3))
    return behind, [cap], hairs


def person_layers(person: Person, rng: np.random.Generator
                  ) -> list[tuple[str, list[np.ndarray]]]:
    """(paint, polygons in pixels) back to front."""
    a, head_tilt = person.aspect, person.tilt
    behind, cap, hairs = hair_outlines(person, rng)
    collar = rng.uniform(0.45, 0.7)
    body = shapes.torso(rng.uniform(1.9, 2.8), rng.uniform(0.5, 1.0), collar,
                        rng.uniform(0.0, 0.35))
    yaw = rng.uniform(-0.15, 0.15) * a
    eyes = [shapes.ellipse(side * 0.33 * a + yaw, -0.05, 0.09, 0.055, 16) for side in (-1, 1)]
    brows = [shapes.ellipse(side * 0.33 * a + yaw, -0.25, 0.16, 0.035, 16)
             for side in (-1, 1)]
    mouth = [shapes.ellipse(yaw, 0.5, rng.uniform(0.14, 0.24), 0.05, 16)]
    units = [("cloth", [body], person.torso_tilt), ("hair", behind, head_tilt),
             ("neck", [shapes.neck(collar * 0.65, 1.6)], person.torso_tilt),
             ("skin", shapes.ears(a), head_tilt),
             ("face", [shapes.head(a, rng.uniform(0.1, 0.3))], head_tilt),
             ("dark", eyes, head_tilt), ("brows", brows, head_tilt),
             ("lips", mouth, head_tilt), ("hair", cap + hairs, head_tilt)]
    return [(paint, [person.place(p, angle) for p in polygons])
            for paint, polygons, angle in units if polygons]


def draw_portrait(rng: np.random.Generator, height: int, width: int,
                  backgrounds: Backgrounds) -> PortraitSample:
    canvas = np.ascontiguousarray(backgrounds.crop(rng, height, width))
    person = sample_person(rng, height, width)
    layers = person_layers(person, rng)
    light = dict(centre=person.centre, reach=3 * person.size,
                 direction=rng.uniform(0, 2 * np.pi), slope=rng.uniform(0, 0.35),
                 gain=rng.uniform(0.7, 1.15))
    colours = _layer_colours(person, rng)
    for paint, polygons in layers:
        box = render.bounding_box(polygons, height, width)
        if box is None:
            continue
        x, y = render.pixel_grid(box)
        colour = colours[paint](x, y) * paints.lighting(x, y, **light)
        render.composite(canvas, render.coverage(polygons, box), colour, box)
    if rng.random() < 0.7:  # sensor noise, uniform (4x cheaper to draw than Gaussian)
        canvas += (rng.random(canvas.shape, dtype=np.float32) - 0.5) * rng.uniform(3, 15)
    person_polygons = [p for _, polygons in layers for p in polygons]
    return PortraitSample(image=np.clip(canvas, 0, 255).astype(np.uint8),
                          mask=render.inside(person_polygons, height, width),
                          hair_style=person.style, polygons=person_polygons,
                          head_centre=tuple(person.place(np.zeros((1, 2)), person.tilt)[0]),
                          head_size=person.size)


def _layer_colours(person: Person, rng: np.random.Generator) -> dict:
    """paint name -> (x, y) -> [h, w, 3] colour, before lighting."""
    head_centre = tuple(person.place(np.zeros((1, 2)), person.tilt)[0])
    hair_angle = person.tilt + rng.uniform(-0.2, 0.2)
    period = max(1.5, person.size * rng.uniform(0.04, 0.12))
    skin = person.skin

    def face(x, y):
        return paints.rounded(skin, x, y, head_centre, person.size * 1.1)

    return {
        "cloth": lambda x, y: paints.cloth(x, y, person.size, rng),
        "hair": lambda x, y: paints.streaks(person.hair, x, y, hair_angle, period, rng),
        "neck": lambda x, y: np.broadcast_to(skin * 0.8, (*x.shape, 3)),
        "skin": lambda x, y: np.broadcast_to(skin * 0.92, (*x.shape, 3)),
        "face": face,
        "dark": lambda x, y: np.broadcast_to(np.float32([35, 28, 25]), (*x.shape, 3)),
        "brows": lambda x, y: np.broadcast_to(person.hair * 0.8, (*x.shape, 3)),
        "lips": lambda x, y: np.broadcast_to(skin * np.float32([0.85, 0.55, 0.55]),
                                             (*x.shape, 3)),
    }


@functools.cache
def bundled_backgrounds() -> Backgrounds:
    return Backgrounds()


def _draw_range(args: tuple[int, int, int, int, int, Backgrounds | None]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Portraits first..stop-1 of `seed`: (images [n, H, W, 3], masks [n, H, W], styles)."""
    seed, first, stop, height, width, backgrounds = args
    backgrounds = bundled_backgrounds() if backgrounds is None else backgrounds
    samples = [draw_portrait(np.random.default_rng([seed, i]), height, width, backgrounds)
               for i in range(first, stop)]
    return (np.stack([s.image for s in samples]), np.stack([s.mask for s in samples]),
            np.array([s.hair_style for s in samples], dtype=np.int64))


def generate_portraits(count: int, seed: int = 0, height: int = 256, width: int = 256,
                       backgrounds: Backgrounds | None = None, workers: int | None = None
                       ) -> PortraitSet:
    """`count` synthetic portraits: images uint8 [N, 3, H, W], masks uint8 [N, 1, H, W]
    in {0, 1}, hair-style labels int64 [N]. Identical for the same arguments whatever
    `workers` (forked processes, each drawing a contiguous range; default one per core,
    at most 4, for 64 portraits or more)."""
    if count < 1:
        raise UserError(f"the number of synthetic portraits must be at least 1, got {count}")
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if count >= 64 else 1
    workers = max(1, min(workers, count))
    cuts = np.linspace(0, count, workers + 1).astype(int)
    jobs = [(seed, int(a), int(b), height, width, backgrounds)
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    if workers > 1:
        bundled_backgrounds() if backgrounds is None else None  # decode once, then fork
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_draw_range, jobs)
    else:
        parts = [_draw_range(jobs[0])]
    images, masks, styles = (np.concatenate(p) for p in zip(*parts, strict=True))
    names = len((backgrounds or bundled_backgrounds()).paths)
    source = (f"synthetic portraits (generated, seed {seed}: {count} images {height}x{width}, "
              f"backgrounds cropped from {names} bundled photos)")
    return PortraitSet(images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                       masks=torch.from_numpy(masks[:, None].astype(np.uint8)),
                       attributes=torch.from_numpy(styles),
                       attribute_names=shapes.HAIR_STYLES, source=source)
