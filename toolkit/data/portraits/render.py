"""Rasterising polygons for the synthetic portraits: antialiased coverage for the image,
an exact inside test for the mask, and "over" compositing.

Pixel (row i, column j) covers [j, j+1) x [i, i+1); its centre is (j + 0.5, i + 0.5).
    coverage(pixel) = (1 / S^2) * #{sub-pixel centres inside the polygons}, S = 4
    mask(pixel)     = [pixel centre inside the union of the person's polygons]
"Inside" is the even-odd rule, sampled at centres by a scanline fill: on row y the
edges crossing it (a_y <= y < b_y, half-open so a vertex counts once) cross at
x_c = a_x + (y - a_y) (b_x - a_x) / (b_y - a_y); sorted, consecutive pairs
[x_1, x_2), [x_3, x_4), ... are inside. (PIL's polygon fill also takes every pixel its
edges touch, about half a pixel too wide, so it is not used.) Coverage is counted from
the spans of the supersampled rows without building the supersampled grid, and only
inside each layer's bounding box.
"""

from __future__ import annotations

import numpy as np

SUPERSAMPLE = 4


def bounding_box(polygons: list[np.ndarray], height: int, width: int
                 ) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the pixels the polygons can touch, clipped to the image."""
    points = np.concatenate(polygons)
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return None if x0 >= x1 or y0 >= y1 else (int(x0), int(y0), int(x1), int(y1))


def spans(polygons: list[np.ndarray], rows: int, columns: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, end) int64: on sample row `row`, samples start <= j < end, at the
    points (j, row), are inside a polygon (each by the even-odd rule), clipped to
    0 <= j <= columns. Spans of different polygons may overlap."""
    sizes = np.array([len(p) for p in polygons])
    a = np.concatenate(polygons)
    owner = np.repeat(np.arange(len(polygons)), sizes)
    following = np.arange(len(a)) + 1
    following[np.cumsum(sizes) - 1] = np.cumsum(sizes) - sizes  # last vertex -> first
    b = a[following]
    low, high = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    first = np.clip(np.ceil(low), 0, rows).astype(np.int64)
    count = np.maximum(np.clip(np.ceil(high), 0, rows).astype(np.int64) - first, 0)
    edge = np.repeat(np.arange(len(a)), count)
    row = first[edge] + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    ax, ay, bx, by = a[edge, 0], a[edge, 1], b[edge, 0], b[edge, 1]
    x = ax + (row - ay) * (bx - ax) / (by - ay)
    # Each polygon's row holds an even number of crossings: pair them in x order.
    order = np.lexsort((x, row, owner[edge]))
    row, x = row[order], np.clip(np.ceil(x[order]), 0, columns).astype(np.int64)
    return row[0::2], x[0::2], x[1::2]


def fill(polygons: list[np.ndarray], rows: int, columns: int) -> np.ndarray:
    """bool [rows, columns]: is sample (i, j), at the point (j, i), inside the union?"""
    row, start, end = spans(polygons, rows, columns)
    index, size = row * (columns + 1), rows * (columns + 1)
    steps = (np.bincount(index + start, minlength=size)
             - np.bincount(index + end, minlength=size))
    return np.cumsum(steps.reshape(rows, columns + 1), axis=1)[:, :columns] > 0


def coverage(polygons: list[np.ndarray], box: tuple[int, int, int, int]) -> np.ndarray:
    """float32 [y1 - y0, x1 - x0]: the fraction of each pixel the union of the polygons
    covers, from S x S samples per pixel."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    shift = np.array([x0, y0], dtype=np.float64)
    found = spans([(p - shift) * SUPERSAMPLE - 0.5 for p in polygons],
                  h * SUPERSAMPLE, w * SUPERSAMPLE)
    return _span_coverage(_union(*found, w * SUPERSAMPLE), h, w)


def _union(row: np.ndarray, start: np.ndarray, end: np.ndarray, columns: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same samples as disjoint spans: overlapping spans of a row merged."""
    if row.size == 0:
        return row, start, end
    order = np.lexsort((start, row))
    row, start, end = row[order], start[order], end[order]
    offset = row * (columns + 2)  # keeps each row's running maximum to itself
    reach = np.maximum.accumulate(end + offset)
    opens = np.ones(row.size, dtype=bool)
    opens[1:] = start[1:] + offset[1:] > reach[:-1]
    first = np.flatnonzero(opens)
    last = np.append(first[1:] - 1, row.size - 1)
    return row[first], start[first], reach[last] - offset[first]


def _span_coverage(found: tuple[np.ndarray, np.ndarray, np.ndarray], h: int, w: int
                   ) -> np.ndarray:
    """Coverage from disjoint spans of supersampled rows, without a supersampled grid:
        F(x) = #{samples j < x inside} = sum_spans ramp(x - start) - ramp(x - end)
        F(S J) = S J N(J) - T(J)
    with N, T the count and sum of the starts (minus those of the ends) whose
    ceil(. / S) <= J; pixel J of a row holds F(S (J + 1)) - F(S J)."""
    row, start, end = found
    index, size = (row // SUPERSAMPLE) * (w + 1), h * (w + 1)
    first_start = index + (start + SUPERSAMPLE - 1) // SUPERSAMPLE
    first_end = index + (end + SUPERSAMPLE - 1) // SUPERSAMPLE
    counts = (np.bincount(first_start, minlength=size)
              - np.bincount(first_end, minlength=size)).reshape(h, w + 1)
    sums = (np.bincount(first_start, weights=start, minlength=size)
            - np.bincount(first_end, weights=end, minlength=size)).reshape(h, w + 1)
    boundary = SUPERSAMPLE * np.arange(w + 1) * np.cumsum(counts, axis=1) - np.cumsum(
        sums, axis=1)
    return (np.diff(boundary, axis=1) / SUPERSAMPLE ** 2).astype(np.float32)


def inside(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """bool [H, W]: pixel centres inside the union of the polygons."""
    return fill([p - 0.5 for p in polygons], height, width)


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
