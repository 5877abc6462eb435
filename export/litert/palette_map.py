"""Palette (k-means lookup-table) weights mapped to the closest format LiteRT runs.

LiteRT has no lookup-table op for weights (its DEQUANTIZE is affine), so a palettized
linear, W[r, j] = lut[r // rows, index[r, j]] (arXiv 2407.21075), is re-quantized to
blockwise affine codes, by default of the same width (b <= 4 -> int4, 5..8 -> int8), in
groups of `group` inputs per row (per channel when `group` does not divide the inputs):

    W'[r, j] = scale[r, k] * (code[r, j] - zero[r, k]),   k = j // group

Each group's grid spans a shrunk range [lo * a, hi * a]: `a` is chosen per group among
SHRINKS to minimise the squared error against W (the min/max grid, a = 1, spends levels
on the range's two extremes; a narrower one often fits the other entries better).

This is lossy: the loss reported for each layer is the relative Frobenius error
||W' - W||_F / ||W||_F, and verification compares the file with the artifact too. Measured on
SmolLM2-135M linears palettized to 4 bits (16 rows per table; 10-11% error vs the float
weight): int4 in groups of 32 adds 7-8% vs the palette, int8 (`--palette-map-bits 8`,
twice the bytes) 0.5%. `--require-carried` refuses such a file (export.litert.exporter): a
mapping is not the artifact's own weights.
"""

from __future__ import annotations

import torch

from models.qformat import AffineQuantized, PaletteQuantized

SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
GROUP = 32


def mapped_bits(palette: PaletteQuantized) -> int:
    """The affine width that holds as many levels as the palette has entries."""
    return 4 if palette.bits <= 4 else 8


def map_palette(palette: PaletteQuantized, group: int = GROUP, bits: int | None = None
                ) -> tuple[AffineQuantized, float]:
    """(the affine codes LiteRT carries, the relative Frobenius error vs the palette).
    `bits`: 4 or 8; None: mapped_bits (the palette's own width)."""
    weight = palette.dequantize().to(torch.float32)
    out, inp = weight.shape
    size = group if inp % group == 0 else inp
    packed = affine_grid_fit(weight, bits or mapped_bits(palette), size)
    return packed, relative_error(packed.dequantize(), weight)


def affine_grid_fit(weight: torch.Tensor, bits: int, group: int) -> AffineQuantized:
    """Asymmetric b-bit codes per group of `group` inputs, each group's range shrunk by
    the SHRINKS factor with the least squared error; fp16 scales as the artifact stores
    them, codes computed with the rounded scale (what the file's DEQUANTIZE uses)."""
    out, inp = weight.shape
    levels = (1 << bits) - 1
    blocks = weight.reshape(out, inp // group, group).to(torch.float32)
    low = blocks.amin(dim=2).clamp(max=0.0)
    high = blocks.amax(dim=2).clamp(min=0.0)
    best = None
    for shrink in SHRINKS:
        scale = ((high - low) * shrink / levels).half().float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group
        zero = torch.clamp(torch.round(-low * shrink / scale), 0, levels)
        codes = torch.clamp(torch.round(blocks / scale[..., None]) + zero[..., None], 0, levels)
        error = ((scale[..., None] * (codes - zero[..., None]) - blocks) ** 2).sum(dim=2)
        if best is None:
            best = [error, scale, zero, codes]
        else:
            better = error < best[0]
            best[0] = torch.where(better, error, best[0])
            best[1] = torch.where(better, scale, best[1])
            best[2] = torch.where(better, zero, best[2])
            best[3] = torch.where(better[..., None], codes, best[3])
    _, scale, zero, codes = best
    return AffineQuantized(codes=codes.reshape(out, inp).to(torch.uint8),
                           scales=scale.half(), zeros=zero.to(torch.uint8), bits=bits,
                           group_size=group)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact||_F / ||exact||_F (0 for an all-zero exact weight)."""
    norm = float(torch.linalg.norm(exact.double()))
    diff = float(torch.linalg.norm(approx.double() - exact.double()))
    return diff / norm if norm > 0 else diff


def describe(palette: PaletteQuantized) -> str:
    """The report's note on a carried record, e.g. "mapped from a 4-bit palette"."""
    return f"mapped from a {palette.bits}-bit palette"


def mapped_layers(quantized: dict | None, bits: int | None = None
                  ) -> dict[str, tuple[PaletteQuantized, AffineQuantized, float]]:
    """Every palette layer of an artifact -> (palette, its mapping, relative error)."""
    return {name: (packed, *map_palette(packed, bits=bits))
            for name, packed in (quantized or {}).items()
            if isinstance(packed, PaletteQuantized)}
