"""What a chunked LLM export (Core ML packages, LiteRT files: consecutive layer ranges,
export.coreml.chunk_plan) records per chunk file, and the whole export's carried and
dropped layers gathered from its chunks, shared by both writers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from export.coreml.chunk_plan import Chunk
from export.records import LayerRecord


@dataclasses.dataclass
class ChunkFileRecord:
    chunk: Chunk
    path: Path
    file_bytes: int
    carried: list[LayerRecord]
    dropped: list[LayerRecord]
    cache_shape: tuple[int, int, int, int]

    def describe(self) -> dict:
        return {"file": self.path.name, "bytes": self.file_bytes,
                "layers": [self.chunk.start, self.chunk.stop - 1],
                "cache": list(self.cache_shape), "carried_layers": len(self.carried)}


class ChunkedRecords:
    """`carried` and `dropped` of an export whose `chunks` are ChunkFileRecords."""

    chunks: list[ChunkFileRecord]

    @property
    def carried(self) -> list[LayerRecord]:
        return [r for c in self.chunks for r in c.carried]

    @property
    def dropped(self) -> list[LayerRecord]:
        return [r for c in self.chunks for r in c.dropped]
