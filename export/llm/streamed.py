"""An artifact too large to load, as an exporter sees it: a lazily opened checkpoint
(models.lazy.LazyCheckpoint) plus what the export job reads beside the weights.

`toolkit export --engine streaming` (or `auto` above the memory budget) passes this
instead of a models.LoadedModel. Only exporters that read weights a part at a time accept
it (`Exporter.streams`): ONNX (export.onnx.decoder_graph, one weight at a time), Core ML
(export.coreml.chunked) and LiteRT (export.litert.chunked), one chunk of layers at a
time.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class StreamedArtifact:
    lazy: Any  # models.lazy.LazyCheckpoint
    source: str  # what the user passed (for the report and the file's metadata)
    tokenizer: Any
    vision: Any = None  # decoder LMs only
    family: str = "llm"

    @property
    def quantized(self) -> dict[str, dict]:
        """Packed linear -> its layout entry (scheme, bits, group size); {} when float."""
        from models.lazy.packed_source import PackedSource

        source = self.lazy.source
        return dict(source.layers) if isinstance(source, PackedSource) else {}


def open_streamed(spec: str) -> StreamedArtifact:
    """The checkpoint of `spec` opened lazily (headers, config and tokenizer only)."""
    from models.lazy.open import open_lazy

    lazy = open_lazy(spec)
    return StreamedArtifact(lazy, str(spec), lazy.tokenizer())
