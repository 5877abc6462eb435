"""Writing a V-MoE artifact (trained, or after expert dropping): `model.safetensors` and
`toolkit.json` with the family, the model config (so a dropped model's smaller expert
count loads back), the input normalisation and the data set, staged then renamed."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from models.vmoe import VisionMoE
from models.vmoe_artifact import FAMILY, WEIGHTS, config_dict
from toolkit.artifacts import save_artifact


def save_vmoe_artifact(out: Path, module: VisionMoE, manifest: dict, input_info: dict, *,
                       overwrite: bool = False) -> Path:
    """`input_info`: {"mean": [...], "std": [...], "dataset": "fashion-mnist" or None}."""
    state = {name: tensor.detach().contiguous().cpu()
             for name, tensor in module.state_dict().items()}

    def write(staging: Path) -> None:
        save_file(state, str(staging / WEIGHTS))

    full = {"format": "edge-toolkit-artifact/1", "family": FAMILY,
            "config": config_dict(module.config), "input": input_info, **manifest}
    return save_artifact(out, write, full, overwrite=overwrite)
