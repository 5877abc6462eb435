"""The MoE LM family: a decoder whose MLPs are token-routed mixtures of experts
(sparsely upcycled, possibly with experts dropped). Read by models/moe_lm_artifact.py,
written by models/mixtral_io.py (transformers' Mixtral layout when the model fits it);
its manifest section "moe" records the shape the reader rebuilds before it loads weights:
{"num_experts": E, "top_k": k, "layers": [experts in each layer], ...}.

A directory without toolkit.json whose config.json is a Mixtral checkpoint is claimed by
this family too, so a user's Mixtral loads as a model drop-experts can edit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from models.adapter import decoder_layout
from models.errors import ModelError
from models.families.llm import is_hf_decoder
from models.family import Adapters, ModelFamily, register_family
from models.mixtral_io import config_model_type, write_moe_lm_weights
from models.mixtral_layout import MIXTRAL_MODEL_TYPE
from models.moe_groups import moe_groups
from models.moe_lm_artifact import load_moe_lm_directory
from models.registry import LoadedModel
from models.upcycle import moe_layers, moe_section

SECTION = "moe"


@dataclasses.dataclass(frozen=True)
class MoeSection:
    """The "moe" section; extra keys (the weights' layout and why) are allowed."""

    num_experts: int
    top_k: int
    layers: tuple[int, ...]

    @classmethod
    def of(cls, section: object, source: str) -> MoeSection:
        try:
            layers = tuple(int(n) for n in section["layers"])
            parsed = cls(int(section["num_experts"]), int(section["top_k"]), layers)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source} has no valid `moe` section ({type(exc).__name__}: "
                             f"{exc}): re-create the artifact") from None
        if not layers or parsed.top_k < 1 or min(layers) < parsed.top_k:
            raise ModelError(f"{source} records {list(layers)} experts per layer with top_k "
                             f"{parsed.top_k}: every layer needs at least top_k experts")
        return parsed


@register_family("moe-llm")
class MoeLlmFamily(ModelFamily):
    kind = "llm"
    section_keys = (SECTION,)

    def owns(self, module: nn.Module) -> bool:
        return is_hf_decoder(module) and bool(moe_layers(module))

    def claims(self, path: Path) -> bool:
        return path.is_dir() and config_model_type(path) == MIXTRAL_MODEL_TYPE

    def read(self, path: Path, manifest: dict | None) -> LoadedModel:
        recorded = None
        if manifest is not None:
            section = MoeSection.of(manifest.get(SECTION), str(path / "toolkit.json"))
            recorded = (list(section.layers), section.top_k)
        loaded = load_moe_lm_directory(path, recorded)
        loaded.family = self.name
        return loaded

    def write(self, staging: Path, loaded: LoadedModel, manifest: dict) -> None:
        # Quantized linears are stored packed (the toolkit layout; models.mixtral_io).
        note = write_moe_lm_weights(loaded.module, staging, loaded.quantized)
        manifest[SECTION].update(note)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(staging)

    def section(self, loaded: LoadedModel) -> dict:
        return {SECTION: moe_section(loaded.module)}

    def check_section(self, manifest: dict, source: str) -> None:
        MoeSection.of(manifest.get(SECTION), source)

    def adapters(self, module: nn.Module) -> Adapters:
        return Adapters(decoder_layout=lambda: decoder_layout(module),
                        moe_groups=lambda: moe_groups(module))
