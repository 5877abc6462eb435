"""The test-only vision CNN family (`fake-cnn`): a tiny conv net that exercises export and
bench of an image model without any real family's structure. Artifact:
`model.safetensors` plus "config" (empty: the architecture is fixed) and "input"."""

from __future__ import annotations

from pathlib import Path

from models.fake_cnn import SHAPE, FakeCnn, smooth_images
from models.family import register_family
from models.registry import LoadedModel
from models.vision_files import InputSection, StateDictFamily, input_of, load_state
from models.vision_input import VisionInput


@register_family("cnn")
class CnnFamily(StateDictFamily):
    module_class = FakeCnn

    def read(self, path: Path, manifest: dict | None) -> LoadedModel:
        section = InputSection.of((manifest or {}).get("input"), SHAPE[1],
                                  str(path / "toolkit.json"))
        module = load_state(path, FakeCnn())
        vision = VisionInput(SHAPE, section.mean, section.std, images=smooth_images)
        return LoadedModel(module=module, tokenizer=None, source=str(path), vision=vision,
                           family=self.name)

    def section(self, loaded: LoadedModel) -> dict:
        return {"config": {}, "input": input_of(loaded.vision)}

    def check_section(self, manifest: dict, source: str) -> None:
        InputSection.of(manifest.get("input"), SHAPE[1], source)
