"""The portrait segmenter family (boundary-sensitive network, arXiv 1712.08675).
Artifact: `model.safetensors`, optionally `calibration.safetensors` (a few raw training
images, uint8 [N, 3, H, W], so int8 calibration and export checks see portraits), and the
manifest section "config" (the full PortraitConfig, hidden_channels included, so a
pruned network is rebuilt from config + weights) and "input" (normalisation, layout,
output and training classes)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from models.channel_groups import channel_prunable
from models.errors import ModelError
from models.family import Adapters, register_family
from models.portrait import CLASSES, MEAN, STD, PortraitSegmenter
from models.portrait_artifact import (
    CALIBRATION,
    CALIBRATION_KEY,
    check_stored_images,
    config_dict,
    config_from_dict,
    portrait_images,
)
from models.registry import LoadedModel
from models.vision_files import (
    ImageSection,
    StateDictFamily,
    load_state,
    read_safetensors,
    write_state,
)
from models.vision_input import VisionInput

# Raw training images stored for int8 calibration / export checks: enough for a
# calibration pass, small next to the weights (16 x 256 x 256 x 3 bytes = 3 MiB).
CALIBRATION_IMAGES = 16


def input_section(mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> dict:
    """The "input" section: normalisation, layout and what the output means."""
    return {"mean": list(mean), "std": list(std), "layout": "NCHW RGB",
            "normalise": "x' = (x / 255 - mean) / std",
            "output": "foreground probability [N, 1, H, W] = p_fg + p_boundary / 2",
            "training_classes": list(CLASSES)}


def portrait_loaded(module: PortraitSegmenter, *, samples: torch.Tensor | None = None,
                    mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD,
                    source: str = "portrait segmenter") -> LoadedModel:
    """A live (e.g. freshly trained) segmenter as a LoadedModel to save; `samples`: raw
    uint8 training images [N, 3, H, W] the artifact keeps for calibration."""
    config = module.config
    vision = VisionInput((1, 3, config.height, config.width), tuple(mean), tuple(std),
                         images=portrait_images(config, samples), samples=samples)
    return LoadedModel(module=module, tokenizer=None, source=source, vision=vision,
                       family=PortraitFamily.name)


def portrait_section(manifest: dict, source: str) -> ImageSection:
    return ImageSection.of(manifest, source, config_from_dict, "portrait", lambda _: 3,
                           "re-create the artifact with `toolkit train portrait`")


@register_family("portrait")
class PortraitFamily(StateDictFamily):
    task = "image-segmentation"
    module_class = PortraitSegmenter
    data_files = (CALIBRATION,)

    def read(self, path: Path, manifest: dict | None) -> LoadedModel:
        section = portrait_section(manifest or {}, str(path / "toolkit.json"))
        module = load_state(path, PortraitSegmenter(section.config))
        samples = None  # carried forward when the model is re-saved
        if (path / CALIBRATION).is_file():
            stored = read_safetensors(path / CALIBRATION).get(CALIBRATION_KEY)
            samples = check_stored_images(path / CALIBRATION, stored, section.config)
        return portrait_loaded(module, samples=samples, mean=section.input.mean,
                               std=section.input.std, source=str(path))

    def write(self, staging: Path, loaded: LoadedModel, manifest: dict) -> None:
        write_state(staging, loaded.module)
        samples = getattr(loaded.vision, "samples", None)
        if samples is None:
            return
        config = loaded.module.config
        samples = samples[:CALIBRATION_IMAGES].to(torch.uint8).contiguous().cpu()
        if tuple(samples.shape[1:]) != (3, config.height, config.width):
            raise ModelError(f"calibration images must be [N, 3, {config.height}, "
                             f"{config.width}], got {tuple(samples.shape)}")
        save_file({CALIBRATION_KEY: samples}, str(staging / CALIBRATION))

    def section(self, loaded: LoadedModel) -> dict:
        vision = loaded.vision
        mean, std = (vision.mean, vision.std) if vision is not None else (MEAN, STD)
        return {"config": config_dict(loaded.module.config), "input": input_section(mean, std)}

    def check_section(self, manifest: dict, source: str) -> None:
        portrait_section(manifest, source)

    def adapters(self, module: nn.Module) -> Adapters:
        return Adapters(channel_groups=lambda: channel_prunable(module).channel_groups())
