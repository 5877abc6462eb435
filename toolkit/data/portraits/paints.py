"""Colours and textures of the synthetic person, evaluated on pixel grids (vectorised):
skin with a rounded shading, hair with strand-like streaks, clothing in one of five
patterns, and one directional light over the whole person."""

from __future__ import annotations

import numpy as np

# Light to dark skin tones (RGB); a person's tone is drawn between two neighbours.
SKIN_TONES = np.array([[245, 215, 190], [230, 185, 150], [200, 150, 115], [165, 115, 80],
                       [120, 80, 55], [85, 55, 40]], dtype=np.float32)
HAIR_COLOURS = np.array([[25, 20, 18], [60, 40, 28], [110, 75, 45], [170, 130, 80],
                         [215, 185, 130], [150, 60, 30], [150, 150, 150]], dtype=np.float32)
CLOTH_PATTERNS = ("solid", "stripes", "checks", "dots", "mottled")


def skin_tone(rng: np.random.Generator) -> np.ndarray:
    i = int(rng.integers(len(SKIN_TONES) - 1))
    return SKIN_TONES[i] + rng.uniform() * (SKIN_TONES[i + 1] - SKIN_TONES[i])


def hair_colour(rng: np.random.Generator) -> np.ndarray:
    base = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
    tinted = base * rng.uniform(0.8, 1.2) + rng.uniform(-10, 10, 3).astype(np.float32)
    return np.clip(tinted, 0, 255)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, 3).astype(np.float32)


def rounded(colour: np.ndarray, x: np.ndarray, y: np.ndarray, centre: tuple[float, float],
            radius: float, strength: float = 0.3) -> np.ndarray:
    """colour * (1 - strength * (d / radius)^2): darker towards the outline."""
    d2 = ((x - float(centre[0])) ** 2 + (y - float(centre[1])) ** 2) / float(radius) ** 2
    return colour * (1 - strength * np.clip(d2, 0, 1.5))[..., None]


def streaks(colour: np.ndarray, x: np.ndarray, y: np.ndarray, angle: float, period: float,
            rng: np.random.Generator) -> np.ndarray:
    """Hair: bright and dark streaks along `angle`, `period` pixels apart, wavy."""
    c, s = float(np.cos(angle)), float(np.sin(angle))  # Python floats keep float32 maths
    across, along = x * c - y * s, x * s + y * c
    phase = rng.uniform(0, 6.3)
    wave = np.sin(2 * np.pi * across / period + 1.5 * np.sin(along / (3 * period) + phase))
    fine = np.sin(2 * np.pi * across / (period * 0.37) + phase)
    return colour * (1 + 0.18 * wave + 0.08 * fine)[..., None]


def cloth(x: np.ndarray, y: np.ndarray, scale: float, rng: np.random.Generator
          ) -> np.ndarray:
    """[h, w, 3] clothing: solid, stripes, checks, dots or mottled, in two colours."""
    first, second = random_colour(rng), random_colour(rng)
    pattern = CLOTH_PATTERNS[int(rng.integers(len(CLOTH_PATTERNS)))]
    period = scale * rng.uniform(0.15, 0.5)
    angle = rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.random() < 0.5 else 0)
    c, s = float(np.cos(angle)), float(np.sin(angle))
    u, v = x * c + y * s, -x * s + y * c
    if pattern == "solid":
        mix = np.zeros_like(x)
    elif pattern == "stripes":
        mix = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif pattern == "checks":
        mix = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif pattern == "dots":
        cu, cv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        mix = (cu ** 2 + cv ** 2 < 0.08).astype(np.float32)
    else:
        mix = 0.5 + 0.25 * (np.sin(u / period * 1.3) + np.sin(v / period * 0.7 + 1.0))
    mix = mix[..., None]
    return first * (1 - mix) + second * mix


def lighting(x: np.ndarray, y: np.ndarray, centre: tuple[float, float], reach: float,
             direction: float, slope: float, gain: float) -> np.ndarray:
    """[h, w, 1] gain * (1 + slope * (p - centre) . (cos d, sin d) / reach), clipped."""
    c, s = float(np.cos(direction)), float(np.sin(direction))
    ramp = ((x - centre[0]) * c + (y - centre[1]) * s) / reach
    return np.clip(gain * (1 + slope * ramp), 0.25, 1.8)[..., None]
