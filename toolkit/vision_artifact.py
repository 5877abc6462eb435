"""Writing a V-MoE artifact (trained, or after expert dropping): a thin wrapper that turns
the module and its input description into a LoadedModel for
`toolkit.artifacts.save_model_artifact` (the V-MoE family, models/families/vmoe.py,
writes the files and its manifest section)."""

from __future__ import annotations

from pathlib import Path

from models.fake_cnn import smooth_images
from models.registry import LoadedModel
from models.vision_input import VisionInput
from models.vmoe import VisionMoE
from toolkit.artifacts import save_model_artifact


def save_vmoe_artifact(out: Path, module: VisionMoE, manifest: dict, input_info: dict, *,
                       overwrite: bool = False, recipe_yaml: str | None = None) -> Path:
    """`input_info`: {"mean": [...], "std": [...], "dataset": "fashion-mnist" or None};
    `recipe_yaml`: the recipe that made it, written as recipe.yaml (re-runnable).
    `manifest` is completed in place (schema keys, config, input, files)."""
    config = module.config
    shape = (1, config.channels, config.image_size, config.image_size)
    vision = VisionInput(shape, tuple(input_info["mean"]), tuple(input_info["std"]),
                         images=smooth_images, dataset=input_info.get("dataset"))
    loaded = LoadedModel(module=module, tokenizer=None, source="V-MoE", vision=vision)
    manifest["input"] = dict(input_info)
    return save_model_artifact(out, loaded, manifest, recipe_yaml=recipe_yaml,
                               overwrite=overwrite)
