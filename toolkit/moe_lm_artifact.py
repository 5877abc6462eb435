"""A mixture-of-experts LM artifact on disk (an upcycled model, later perhaps with experts
dropped): the Hugging Face directory (config.json, tokenizer, model.safetensors) plus
`toolkit.json`, whose "family": "moe-llm" and "moe" section ({"num_experts", "top_k",
"layers": experts per layer, "layout"}) let `models.load_model(DIR)` rebuild the shape.

The weights are in transformers' Mixtral layout when the model fits it, so plain
`AutoModelForCausalLM.from_pretrained(DIR)` loads them; otherwise in the toolkit's own
(stacked) layout, with the reason in `moe.layout_reason` (models.mixtral_io)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import LoadedModel
from models.mixtral_io import write_moe_lm_weights
from models.moe_lm_artifact import FAMILY
from models.upcycle import moe_section
from toolkit.artifacts import save_artifact
from toolkit.errors import UserError

ARTIFACT_FORMAT = "edge-toolkit-artifact/1"


def save_moe_lm_artifact(out: Path, loaded: LoadedModel, manifest: dict[str, Any], *,
                         overwrite: bool = False) -> Path:
    """Write the artifact atomically (staged, then renamed); `manifest` gains, in place
    (as with toolkit.lm_artifact), the format, family, MoE shape and the files' sizes."""
    section = moe_section(loaded.module)
    if section is None:
        raise UserError("the model has no mixture-of-experts layers: save it as a plain "
                        "LLM artifact instead")
    manifest.setdefault("format", ARTIFACT_FORMAT)
    manifest.update({"family": FAMILY, "moe": section})

    def write(staging: Path) -> None:
        section.update(write_moe_lm_weights(loaded.module, staging))
        loaded.tokenizer.save_pretrained(staging)
        weights = sorted(staging.glob("*.safetensors"))
        manifest["files"] = {
            "weights_bytes": sum(p.stat().st_size for p in weights),
            "total_bytes": sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()),
            "weights": [p.name for p in weights],
        }

    return save_artifact(out, write, manifest, overwrite=overwrite)
