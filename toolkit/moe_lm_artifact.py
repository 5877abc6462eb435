"""A mixture-of-experts LM artifact on disk (an upcycled model, later perhaps with experts
dropped): written by `toolkit.artifacts.save_model_artifact` through the MoE LM family
(models/families/moe_llm.py: transformers' Mixtral layout when the model fits it, with
the "moe" section {"num_experts", "top_k", "layers", "layout"} in toolkit.json). This
wrapper only refuses a dense model, which belongs in a plain LLM artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import LoadedModel
from models.upcycle import moe_layers
from toolkit.artifacts import save_model_artifact
from toolkit.errors import UserError


def save_moe_lm_artifact(out: Path, loaded: LoadedModel, manifest: dict[str, Any], *,
                         overwrite: bool = False) -> Path:
    """Write the artifact atomically (staged, then renamed); `manifest` is completed in
    place with the schema keys, family, MoE shape and the files' sizes."""
    if not moe_layers(loaded.module):
        raise UserError("the model has no mixture-of-experts layers: save it as a plain "
                        "LLM artifact instead")
    return save_model_artifact(out, loaded, manifest, overwrite=overwrite)
