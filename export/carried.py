"""Which of an artifact's compression stages an exported file carries, from the artifact's
manifest (toolkit.json) and the exporter's per-layer records.

    prune (magnitude, wanda, sparsegpt)   carried only as a sparse weight format; zeros
                                          stored dense are listed under "dropped" and lost
    quantize (rtn, gptq, awq, palettize)  lost when no quantized layer reached the file in
                                          its packed form (all written as float)
    channel-prune, drop-experts, distill  structural: the graph itself is smaller, so every
                                          export carries them

`export` may not import `compress` (ARCHITECTURE.md floors), so stages are told apart by
the "kind" each stage's report records, with the method names as a fallback for older
manifests.
"""

from __future__ import annotations

from pathlib import Path

from export.errors import ExportError
from export.records import LayerRecord
from models.errors import ModelError
from models.manifest import read_manifest as read_artifact_manifest

# Fallback when a stage recorded no "kind": method name -> kind.
KIND_OF_METHOD = {"magnitude": "prune", "wanda": "prune", "sparsegpt": "prune",
                  "rtn": "quantize", "gptq": "quantize", "awq": "quantize",
                  "palettize": "quantize"}
SCHEME_NAMES = {"palette": "palettized weights", "affine": "integer-quantized weights"}


def read_manifest(source: str) -> dict | None:
    """The manifest of the artifact directory `source` (an old format upgraded in memory);
    None for a registered name, a plain Hugging Face directory or a GGUF file."""
    try:
        return read_artifact_manifest(Path(source)) if Path(source).is_dir() else None
    except ModelError as exc:
        raise ExportError(str(exc)) from None


def stage_kinds(manifest: dict | None) -> set[str]:
    """Kinds of compression the artifact's stages applied ("prune", "quantize", ...)."""
    if not manifest:
        return set()
    kinds: set[str] = set()
    for stage in manifest.get("stages") or []:
        if isinstance(stage, dict):
            kind = stage.get("kind") or (stage.get("report") or {}).get("kind")
            kinds.add(kind or KIND_OF_METHOD.get(stage.get("method"), ""))
    recipe = (manifest.get("recipe") or {}).get("stages") or []
    methods = [s.get("method") for s in recipe if isinstance(s, dict)]
    methods.append((manifest.get("method") or {}).get("method"))
    kinds.update(KIND_OF_METHOD[m] for m in methods if m in KIND_OF_METHOD)
    for section in ("report", "pruning"):  # vision artifacts' single-stage reports
        kind = (manifest.get(section) or {}).get("kind")
        if kind:
            kinds.add(kind)
    kinds.discard("")
    return kinds


def pruned_sparsity(manifest: dict | None) -> float | None:
    """The artifact's recorded sparsity when one of its stages pruned, else None: zeros
    that quantization makes (a code equal to its zero point) are not pruning."""
    if "prune" not in stage_kinds(manifest):
        return None
    return float((manifest.get("sparsity") or {}).get("overall", 0.0))


def weights_bytes(source: str) -> int | None:
    """Bytes of the artifact's weight files (safetensors), None if it has none."""
    directory = Path(source)
    if not directory.is_dir():
        return None
    sizes = [p.stat().st_size for p in directory.glob("*.safetensors")]
    return sum(sizes) or None


def lost_quantization(quantized: dict | None, carried: list[LayerRecord], file_bytes: int,
                      source: str) -> str | None:
    """A phrase naming the quantized weights when none of them was carried, else None."""
    if not quantized or carried:
        return None
    # values: packed weights (models.qformat), or their layout entries for a streamed artifact
    schemes = sorted({packed.get("scheme", "") if isinstance(packed, dict)
                      else getattr(packed, "scheme", "") for packed in quantized.values()})
    what = " and ".join(SCHEME_NAMES.get(s, f"{s} weights") for s in schemes)
    artifact = weights_bytes(source)
    size = (f", {file_bytes / artifact:.1f}x the artifact's weights" if artifact else "")
    return f"{what} (written as float32{size})"


def lost_sparsity(sparsity: float | None, carried: list[LayerRecord]) -> str | None:
    """A phrase naming the pruned zeros when no layer was carried in a sparse format."""
    if sparsity is None or any("sparse" in r.carried_as for r in carried):
        return None
    return f"pruned zeros ({sparsity:.1%} of the pruned layers' weights, stored dense)"
