"""The model-family registry, generated over the registries: every family x every fake
model registered with it is written with `save_model_artifact` and read back with
`models.load`; weights and outputs must be equal and the manifest valid. Old (/1)
artifacts committed under tests/fixtures/artifacts_v1 must load with the weights their
files hold, checked by reading the files directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import models
from models.errors import ModelError
from models.family import family_named, family_of_module, list_families
from models.load import family_of, model_family
from models.manifest import FORMAT, check_manifest, upgrade_manifest
from models.qformat import AffineQuantized
from models.registry import create_model, list_models
from toolkit.artifacts import MANIFEST, save_model_artifact

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "artifacts_v1"
FAKES = [(spec.family, spec.name) for spec in list_models() if spec.fake]
# Fixture directory -> the family it must load as (format /1 shapes, see the README there).
V1_FIXTURES = {"llm-float": "llm", "llm-rtn4": "llm", "moe-llm": "moe-llm",
               "vmoe": "vmoe", "portrait": "portrait"}


def model_input(loaded) -> torch.Tensor:
    """Token ids for a language model, normalised images for an image model."""
    if family_named(loaded.family).kind == "llm":
        return torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    return loaded.vision.normalise(loaded.vision.images(2, 5))


def outputs(loaded, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        result = loaded.module(inputs)
    return result.logits if hasattr(result, "logits") else result


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert set(left) == set(right)
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


def test_every_family_has_a_fake_model_and_a_valid_kind():
    names = {family.name for family in list_families()}
    assert {"llm", "moe-llm", "vmoe", "portrait", "cnn"} <= names
    assert {family for family, _ in FAKES} == names  # the tests below reach every family
    assert all(family.kind in ("llm", "vision") for family in list_families())


@pytest.mark.parametrize(("family", "name"), FAKES)
def test_registered_family_owns_the_module(family, name):
    loaded = create_model(name)
    assert loaded.family == family
    assert family_of_module(loaded.module).name == family  # exactly one family owns it
    assert model_family(name) == family_named(family).kind


@pytest.mark.parametrize(("family", "name"), FAKES)
def test_write_then_load_gives_the_same_model(family, name, tmp_path):
    loaded = create_model(name)
    manifest = {"recipe": {"stages": []}, "note": "kept"}
    out = save_model_artifact(tmp_path / "artifact", loaded, manifest)
    written = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert written == manifest  # the caller's dict was completed in place
    assert written["format"] == FORMAT and written["family"] == family
    assert written["note"] == "kept" and written["stages"] == [] and written["metrics"] == {}
    check_manifest(written, str(out))
    on_disk = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    assert written["files"]["names"] == on_disk
    assert written["files"]["total_bytes"] == sum((out / n).stat().st_size for n in on_disk)
    assert family_of(str(out)).name == family and model_family(str(out)) == loaded_kind(family)

    again = models.load(str(out))
    assert again.family == family
    assert_same_weights(loaded.module, again.module)
    inputs = model_input(loaded)
    torch.testing.assert_close(outputs(again, inputs), outputs(loaded, inputs),
                               rtol=0, atol=0)


def loaded_kind(family: str) -> str:
    return family_named(family).kind


def test_old_style_vision_registration_gets_its_family_from_the_module(monkeypatch):
    """`register_model(..., family="vision")` (the kind, as before the family registry)
    still works: the family is the one that owns the built module."""
    from models import registry

    spec = registry.ModelSpec("legacy-cnn", "vision", "random", "old-style", False,
                              lambda: create_model("fake-cnn"))
    monkeypatch.setitem(registry._REGISTRY, "legacy-cnn", spec)
    assert create_model("legacy-cnn").family == "cnn"
    assert model_family("legacy-cnn") == "vision" and family_of("legacy-cnn") is None


def test_paths_without_a_manifest_go_to_the_family_that_claims_them(tmp_path):
    from models.family import family_for_path

    assert family_for_path(tmp_path / "model.gguf").name == "llm"
    assert family_for_path(tmp_path).name == "llm"  # a plain Hugging Face directory
    assert family_for_path(tmp_path / "notes.txt") is None
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ModelError, match="not a .gguf"):
        models.load(str(tmp_path / "notes.txt"))


def rtn_quantize(module: torch.nn.Module, bits: int = 4, group: int = 32) -> dict:
    """Asymmetric round-to-nearest of every decoder-block linear, written out here (not
    the toolkit's method) so the round trip is checked against an independent grid."""
    quantized = {}
    for name, linear in module.named_modules():
        if not (isinstance(linear, torch.nn.Linear) and ".layers." in name):
            continue
        weight = linear.weight.detach().view(linear.out_features, -1, group)
        low, high = weight.amin(dim=2), weight.amax(dim=2)
        scales = ((high - low) / (2 ** bits - 1)).clamp(min=1e-6).half()
        zeros = torch.round(-low / scales.float()).clamp(0, 2 ** bits - 1)
        codes = torch.round(weight / scales.float().unsqueeze(2) + zeros.unsqueeze(2))
        codes = codes.clamp(0, 2 ** bits - 1).to(torch.uint8).view_as(linear.weight)
        packed = AffineQuantized(codes, scales, zeros.to(torch.uint8), bits, group)
        with torch.no_grad():
            linear.weight.copy_(packed.dequantize())
        quantized[name] = packed
    return quantized


def test_quantized_llm_round_trip(tmp_path):
    loaded = create_model("fake-llama")
    loaded.quantized = rtn_quantize(loaded.module)
    out = save_model_artifact(tmp_path / "q", loaded, {}, recipe_yaml="stages: []\n")
    assert (out / "recipe.yaml").read_text(encoding="utf-8") == "stages: []\n"
    again = models.load(str(out))
    assert set(again.quantized) == set(loaded.quantized)
    for name, packed in loaded.quantized.items():
        assert torch.equal(again.quantized[name].codes, packed.codes), name
    assert_same_weights(loaded.module, again.module)


def test_a_module_no_family_owns_cannot_be_saved(tmp_path):
    loaded = create_model("fake-cnn")
    loaded.module = torch.nn.Linear(2, 2)
    with pytest.raises(ModelError, match="none of the model families"):
        save_model_artifact(tmp_path / "x", loaded, {})
    assert not (tmp_path / "x").exists()


def test_unknown_family_or_format_is_one_clear_error(tmp_path):
    out = save_model_artifact(tmp_path / "a", create_model("fake-cnn"), {})
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    (out / MANIFEST).write_text(json.dumps({**manifest, "family": "teapot"}), encoding="utf-8")
    with pytest.raises(ModelError, match="family 'teapot'.*known: cnn, llm"):
        models.load(str(out))
    (out / MANIFEST).write_text(json.dumps({**manifest, "format": "edge-toolkit-artifact/9"}),
                                encoding="utf-8")
    with pytest.raises(ModelError, match="unknown artifact format"):
        models.load(str(out))
    (out / MANIFEST).write_text(json.dumps({**manifest, "input": {"mean": [0.5]}}),
                                encoding="utf-8")
    with pytest.raises(ModelError, match="input"):
        models.load(str(out))
    (out / MANIFEST).write_text(json.dumps({**manifest, "stages": "all of them"}),
                                encoding="utf-8")
    with pytest.raises(ModelError, match="'stages' is missing or not a list"):
        models.load(str(out))


# ---- format /1 artifacts ----


@pytest.mark.parametrize("directory", sorted(V1_FIXTURES))
def test_v1_manifest_upgrades_to_the_current_schema(directory):
    raw = json.loads((FIXTURES / directory / MANIFEST).read_text(encoding="utf-8"))
    assert raw["format"] == "edge-toolkit-artifact/1"
    upgraded = upgrade_manifest(raw)
    assert upgraded["format"] == FORMAT and upgraded["family"] == V1_FIXTURES[directory]
    check_manifest(upgraded, directory)
    assert raw["format"] == "edge-toolkit-artifact/1"  # the input is not modified


@pytest.mark.parametrize("directory", sorted(V1_FIXTURES))
def test_v1_artifact_loads_the_weights_its_files_hold(directory):
    path = FIXTURES / directory
    loaded = models.load(str(path))
    assert loaded.family == V1_FIXTURES[directory]
    state = loaded.module.state_dict()
    held = load_file(str(path / "model.safetensors"))
    expected = dequantized_from_file(path) if directory == "llm-rtn4" else {}
    for name, tensor in held.items():
        if name.rsplit(".", 1)[-1] in ("qweight", "scales", "qzeros"):
            continue
        assert torch.equal(state[name], tensor), name
    for name, weight in expected.items():
        assert torch.equal(state[f"{name}.weight"], weight), name
    assert expected or directory != "llm-rtn4"
    inputs = model_input(loaded)
    assert torch.isfinite(outputs(loaded, inputs)).all()


def dequantized_from_file(path: Path) -> dict[str, torch.Tensor]:
    """The fixture's 4-bit, group-64, asymmetric codes dequantized straight from the file
    (two codes per byte, low nibble first): W = scale * (code - zero)."""
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    weights = {}
    for key in tensors:
        if not key.endswith(".qweight"):
            continue
        name = key[: -len(".qweight")]
        scales = tensors[f"{name}.scales"].float()
        out, groups = scales.shape

        def nibbles(packed: torch.Tensor) -> torch.Tensor:
            return torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1).float()

        codes = nibbles(tensors[key]).view(out, groups, 64)
        zeros = nibbles(tensors[f"{name}.qzeros"])[: out * groups].view(out, groups, 1)
        weights[name] = (scales.unsqueeze(2) * (codes - zeros)).view(out, groups * 64)
    return weights
