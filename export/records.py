"""How each compressed layer ended up in an exported file, for every format's report."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class LayerRecord:
    name: str  # the source model's layer name
    carried_as: str  # the op that carries it, or why it was stored as float
