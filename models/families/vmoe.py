"""The Mobile V-MoE family (arXiv 2309.04354): a per-image routed ViT mixture of experts.
Artifact: `model.safetensors` plus the manifest section "config" (the VMoEConfig, so an
expert-dropped model's smaller expert count loads back) and "input" (pixel normalisation
and the data set it was trained on)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from models.family import Adapters, register_family
from models.moe_groups import moe_groups
from models.registry import LoadedModel
from models.vision_files import ImageSection, StateDictFamily, input_of, load_state
from models.vmoe import VisionMoE, VMoEConfig
from models.vmoe_artifact import config_dict, vision_input


def vmoe_section(manifest: dict, source: str) -> ImageSection:
    return ImageSection.of(manifest, source, lambda values: VMoEConfig(**values), "V-MoE",
                           lambda config: config.channels)


@register_family("vmoe")
class VMoEFamily(StateDictFamily):
    module_class = VisionMoE

    def read(self, path: Path, manifest: dict | None) -> LoadedModel:
        manifest = manifest or {}
        section = vmoe_section(manifest, str(path / "toolkit.json"))
        config, normalise = section.config, section.input
        module = load_state(path, VisionMoE(config))
        shape = (1, config.channels, config.image_size, config.image_size)
        vision = vision_input(shape, normalise.mean, normalise.std,
                              manifest["input"].get("dataset"))
        return LoadedModel(module=module, tokenizer=None, source=str(path), vision=vision,
                           family=self.name)

    def section(self, loaded: LoadedModel) -> dict:
        return {"config": config_dict(loaded.module.config),
                "input": input_of(loaded.vision, dataset=loaded.vision.dataset)}

    def check_section(self, manifest: dict, source: str) -> None:
        vmoe_section(manifest, source)

    def adapters(self, module: nn.Module) -> Adapters:
        return Adapters(moe_groups=lambda: moe_groups(module))
