"""Which decoder layers go into which Core ML chunk.

A model too large to convert (or, on the device, to load) as one package is split the way
Apple splits its large models: into consecutive parts, each its own .mlpackage with the
same weight size, run one after the other with the activation passed between them
(ml-stable-diffusion cuts a converted program where half the weights lie; we cut before
converting, at layer boundaries, so that each conversion holds only its own layers).

The first chunk also holds the embedding table and the last the final norm and LM head
(the table again when the head is tied, since a package cannot read another's weights),
so the layers are shared out to even the parameters per chunk (what a conversion holds,
in float32), not the layer count; the files then differ where the table is stored wider
than the layers (an fp16 table beside 4-bit layers: use --embedding-bits to even them):
boundary k is the layer at which the running weight total comes nearest k / N of the
whole, with at least one layer per chunk.
"""

from __future__ import annotations

import dataclasses
import math

from export.errors import ExportError

# Float32 weight bytes one chunk may hold when the chunk count is chosen automatically (a
# model read lazily, without --chunks). Conversion holds a chunk's weights several times
# (float32 module, torch.export's copy, the converter's constants, the compressed ops):
# the afm-3b RTN-4 artifact in 8 chunks (at most 1.6 GB of float32 weights each) peaked
# at 7.8 GB resident, so 1.5 GB keeps a conversion near 8 GB whatever the model's size.
AUTO_CHUNK_FLOAT32_BYTES = 1_500_000_000


@dataclasses.dataclass(frozen=True)
class Chunk:
    index: int  # 0-based
    count: int
    start: int  # first layer
    stop: int  # one past the last layer

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    @property
    def layers(self) -> range:
        return range(self.start, self.stop)


def auto_chunk_count(total_float32_bytes: int, layers: int) -> int:
    """Chunks of at most AUTO_CHUNK_FLOAT32_BYTES each (at least 1, at most one a layer)."""
    return max(1, min(layers, math.ceil(total_float32_bytes / AUTO_CHUNK_FLOAT32_BYTES)))


def plan_chunks(layers: int, count: int, *, layer_weight: float = 1.0,
                first_extra: float = 0.0, last_extra: float = 0.0) -> list[Chunk]:
    """`count` chunks of consecutive layers, balanced by weight: every layer weighs
    `layer_weight`, the first chunk carries `first_extra` more (the table) and the last
    `last_extra` (norm and head)."""
    if not isinstance(count, int) or count < 1:
        raise ExportError(f"--chunks {count!r} must be a positive integer, e.g. 4")
    if count > layers:
        raise ExportError(f"--chunks {count} exceeds the model's {layers} decoder layers: "
                          f"choose at most {layers}")
    total = first_extra + layers * layer_weight + last_extra
    stops, done = [], 0
    for k in range(1, count):
        target = k * total / count
        # the layer count i whose running total first_extra + i * w is nearest the target,
        # leaving at least one layer for each chunk still to come
        best = round((target - first_extra) / layer_weight) if layer_weight else done + 1
        best = min(max(best, done + 1), layers - (count - k))
        stops.append(best)
        done = best
    stops.append(layers)
    starts = [0] + stops[:-1]
    return [Chunk(i, count, a, b) for i, (a, b) in enumerate(zip(starts, stops, strict=True))]
