"""`toolkit run` over the registries: every fake model of every family x every registered
method that applies to it (decided by the adapter the method declares it needs,
compress/requirements.py, not by a typed list), each followed by a distillation stage
where one may follow. The artifact loads back as the compressed network, holds its
recipe.yaml, and that recipe re-run from another directory writes the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

import compress  # noqa: F401  (registers every method)
from compress.config import registered_methods
from compress.quant.base import QuantConfig
from compress.requirements import applicable_methods
from models import create_model, list_models, load_model

# Tiny calibration: the point is that every pair runs end to end, not the quality.
CALIBRATION = {"samples": 4, "seq_len": 16, "seed": 3}
# Knobs that keep a method fast on a fake model (defaults otherwise).
FAST_KNOBS = {"drop-experts": {"batch_size": 4}, "channel-prune": {"batch_size": 4},
              "palettize": {"group_rows": None}}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for spec in list_models():
        if spec.fake:
            module = create_model(spec.name).module
            cases += [(spec.name, method) for method in applicable_methods(module)]
    return cases


CASES = _cases()


def test_every_method_and_every_family_has_a_case():
    """The loop is not vacuous: each standalone method runs on some fake model, and the
    vision families are in it."""
    standalone = {name for name, config in registered_methods().items()
                  if config.adapter is not None}
    assert {method for _, method in CASES} == standalone
    assert {"fake-vmoe", "fake-portrait", "fake-llama", "fake-moe-llm"} <= \
        {model for model, _ in CASES}


def test_every_family_has_a_workflow_and_every_fake_finds_its_own():
    """A family whose task no workflow serves fails here; each fake model resolves to the
    workflow of its family's task."""
    from models.family import family_named, list_families
    from toolkit.workflows import registered_workflows, workflow_for

    served = {w.task for w in registered_workflows()}
    assert {family.task for family in list_families()} <= served
    for spec in list_models():
        if spec.fake:
            loaded = create_model(spec.name)
            assert workflow_for(loaded).task == family_named(loaded.family).task, spec.name


def _stages(method: str) -> list[dict]:
    stages = [{"method": method, **FAST_KNOBS.get(method, {})}]
    if not issubclass(registered_methods()[method], QuantConfig):
        stages.append({"method": "distill", "steps": 2, "batch_size": 2})
    return stages


def _weights(directory: Path) -> dict[str, tuple[dict, dict[str, bytes]]]:
    """File name -> (metadata, tensor name -> raw bytes) of every safetensors file: the
    stored values exactly (a header's key order is not part of the weights)."""
    files = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: _raw(handle.get_tensor(key)) for key in handle.keys()}
            files[path.name] = (handle.metadata() or {}, tensors)
    return files


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("model, method", CASES, ids=[f"{m}-{x}" for m, x in CASES])
def test_recipe_runs_saves_loads_back_and_reruns(toolkit_cli, tmp_path, monkeypatch,
                                                 model, method):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": model, "calibration": CALIBRATION,
                                      "eval": {"windows": 1, "seq_len": 16},
                                      "stages": _stages(method)}), encoding="utf-8")
    out, report = tmp_path / "out", tmp_path / "out.json"
    result = toolkit_cli("run", recipe, "--out", out, "--json", report, "--no-eval",
                         "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads(report.read_text(encoding="utf-8"))
    assert [s["method"] for s in manifest["stages"]] == [s["method"] for s in _stages(method)]
    saved = yaml.safe_load((out / "recipe.yaml").read_text(encoding="utf-8"))
    assert saved["model"] == model and saved["stages"][0]["method"] == method
    # Loads back as the network the stages produced (its parameter count, when the
    # method reports one; the dropped experts / pruned channels are gone).
    loaded = load_model(str(out))
    first = manifest["stages"][0]["report"]
    if "params_after" in first:
        assert sum(p.numel() for p in loaded.module.parameters()) == first["params_after"]
        assert first["params_after"] < first["params_before"]
    if loaded.vision is not None:
        x = loaded.vision.normalise(loaded.vision.images(2, 5))
        with torch.no_grad():
            assert torch.isfinite(loaded.module.eval()(x)).all()
    # The saved recipe, re-run from another directory, repeats the run.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = toolkit_cli("run", out / "recipe.yaml", "--out", "again", "--no-eval", "--quiet")
    assert again.code == 0, again.err
    assert _weights(elsewhere / "again") == _weights(out)


def _chdir(monkeypatch, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(path)
    return path


def _compress_then_rerun_elsewhere(toolkit_cli, monkeypatch, tmp_path: Path, model: str,
                                   *flags: str) -> Path:
    """`toolkit compress --model MODEL` (a path relative to tmp_path/work) into work/out1;
    the saved recipe names MODEL's absolute path; `toolkit run work/out1/recipe.yaml` from
    tmp_path/other writes out2 with the same weight bytes. Returns tmp_path/other."""
    work = tmp_path / "work"
    first = toolkit_cli("compress", "--model", model, *flags, "--no-eval", "--quiet",
                        "--out", "out1")
    assert first.code == 0, first.err
    saved = yaml.safe_load((work / "out1" / "recipe.yaml").read_text(encoding="utf-8"))
    assert saved["model"] == str((work / model).resolve())
    other = _chdir(monkeypatch, tmp_path / "other")
    again = toolkit_cli("run", work / "out1" / "recipe.yaml", "--out", "out2", "--no-eval",
                        "--quiet")
    assert again.code == 0, again.err
    assert (other / "out2" / "model.safetensors").read_bytes() == \
        (work / "out1" / "model.safetensors").read_bytes()
    return other


def test_saved_recipe_recompresses_the_llm_dir_it_came_from(toolkit_cli, fake_model_dir,
                                                            tmp_path, monkeypatch):
    """Given by a relative path, the source is recorded absolute: `toolkit run
    OUT/recipe.yaml` from another directory compresses it again, to the same bytes (the
    recipe's default model would be another network)."""
    import shutil

    work = _chdir(monkeypatch, tmp_path / "work")
    shutil.copytree(fake_model_dir, work / "llama")
    _compress_then_rerun_elsewhere(toolkit_cli, monkeypatch, tmp_path, "llama", "--method",
                                   "wanda", "--calib-samples", "2", "--seq-len", "16")


def test_saved_recipe_recompresses_the_portrait_artifact_it_came_from(toolkit_cli, tmp_path,
                                                                      monkeypatch):
    work = _chdir(monkeypatch, tmp_path / "work")
    fast = ["--calib-samples", "4"]
    base = toolkit_cli("compress", "--model", "fake-portrait", "--method", "channel-prune",
                       "--criterion", "bn-scale", "--sparsity", "0.25", "--out", "base",
                       "--no-eval", "--quiet", *fast)
    assert base.code == 0, base.err
    other = _compress_then_rerun_elsewhere(toolkit_cli, monkeypatch, tmp_path, "base",
                                           "--method", "channel-prune", *fast)
    assert load_model(str(other / "out2")).module.config == \
        load_model(str(work / "out1")).module.config


@pytest.mark.parametrize("stages, words", [
    ([{"method": "wanda"}], ["method wanda does not apply", "portrait segmenter",
                             "use --method channel-prune"]),
    ([{"method": "drop-experts"}], ["mixture-of-experts", "use --method channel-prune"]),
    ([{"method": "distill"}], ["stage 1 is distill", "compression stage"]),
])
def test_stages_that_cannot_run_are_refused_before_work(toolkit_cli, tmp_path, stages, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "fake-portrait", "stages": stages}),
                      encoding="utf-8")
    result = toolkit_cli("run", recipe, "--out", tmp_path / "out", "--quiet")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    for word in words:
        assert word in result.err
    assert not (tmp_path / "out").exists()
