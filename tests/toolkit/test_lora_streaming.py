"""Block-wise LoRA under the streaming engine (compress/recovery/lora_block.py,
lora_streaming.py): each compressed block's adapters bring its output closer to the dense
block's, the base weights are those of the same recipe without lora, the adapters are in
the artifact's file and applied by eval and the streamed ONNX export, a killed run resumes
to the same bytes, and a recipe with nothing to adapt is refused in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models.qformat.lora import LORA_FILE
from tests.toolkit.streaming_helpers import all_tensors, tiny_checkpoint, weight_hashes

REPO = Path(__file__).resolve().parents[2]
RTN = {"method": "rtn", "bits": 3, "group_size": 32}
LORA = {"method": "lora", "rank": 4, "block_steps": 20}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _recipe(folder: Path, stages: list[dict], name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"calibration": {"samples": 4, "seq_len": 32, "seed": 0},
                                    "stages": stages}), encoding="utf-8")
    return path


def _run(recipe: Path, source: Path, out: Path, crash: str | None = None,
         extra: tuple = ("--no-eval",)):
    env = {k: v for k, v in os.environ.items() if k != "EDGE_TOOLKIT_CRASH_AT"}
    env.update(ONE_THREAD, **({"EDGE_TOOLKIT_CRASH_AT": crash} if crash else {}))
    return subprocess.run([sys.executable, "-m", "toolkit", "run", str(recipe), "--model",
                           str(source), "--engine", "streaming", "--out", str(out), "--quiet",
                           *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-stream")
    source = tiny_checkpoint(folder / "tiny", layers=4)
    recipe = _recipe(folder, [RTN, LORA], "rtn-lora")
    outs = {}
    for name, stages in (("rtn", [RTN]), ("rtn-lora", [RTN, LORA])):
        out = folder / name
        result = _run(_recipe(folder, stages, name), source, out)
        assert result.returncode == 0, result.stderr
        outs[name] = out
    return {"source": source, "recipe": recipe, **outs}


def test_each_block_gets_adapters_that_bring_it_closer_to_the_dense_block(runs):
    out = runs["rtn-lora"]
    section = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))[
        "stages"][1]["report"]
    assert section["kind"] == "lora" and section["variant"] == "block-wise"
    blocks = section["blocks"]
    assert len(blocks) == 4 and section["blocks_recovered"] == 4
    assert all(b["loss_after"] < b["loss_before"] for b in blocks)
    from safetensors import safe_open

    with safe_open(str(out / LORA_FILE), framework="pt") as handle:
        names = sorted(k[:-len(".lora_A")] for k in handle.keys() if k.endswith(".lora_A"))
        assert handle.get_tensor(names[0] + ".lora_A").dtype == torch.float16
    assert len(names) == 4 * 7 == section["linears"]


def test_the_base_weights_are_the_recipe_without_lora(runs):
    def base(out):
        return {k: v for k, v in all_tensors(out).items() if ".lora_" not in k}
    a, b = base(runs["rtn"]), base(runs["rtn-lora"])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_adapted_model_is_closer_to_the_dense_one_on_its_calibration_text(runs):
    """Independently of the stage's own per-block losses: the whole model in memory
    (adapters attached by the loader) against the dense source, logits on the
    calibration windows the adapters were fitted to (each block learnt on the adapted
    upstream's activations, so the gains compose). On held-out text a 4-window fit of
    random weights proves nothing either way; BENCHMARKS.md measures a real model."""
    import models
    from toolkit.recipe import CalibrationSpec
    from toolkit.workflows.llm import calibration

    dense_model = models.load_model(str(runs["source"]))
    tokens = calibration(dense_model, CalibrationSpec(samples=4, seq_len=32, seed=0)).inputs
    with torch.no_grad():
        dense = dense_model.module(tokens).logits
        errors = {name: float((models.load_model(str(runs[name])).module(tokens).logits
                               - dense).pow(2).mean()) for name in ("rtn", "rtn-lora")}
    assert errors["rtn-lora"] < 0.8 * errors["rtn"], errors


def test_streamed_onnx_export_carries_the_block_wise_adapters(runs, toolkit_cli, tmp_path):
    pytest.importorskip("onnxruntime")
    report = tmp_path / "e.json"
    result = toolkit_cli("export", "onnx", "--model", runs["rtn-lora"], "--engine",
                         "streaming", "--out", tmp_path / "m.onnx", "--json", report,
                         "--max-context", "64", "--new-tokens", "4", "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["verdict"] == "passed"
    assert sum(n for how, n in data["carried"].items() if "lora" in how) == 28


def test_a_killed_run_resumes_to_the_same_bytes(runs, tmp_path):
    out = tmp_path / "out"
    killed = _run(runs["recipe"], runs["source"], out, crash="after-journal:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(runs["recipe"], runs["source"], out)
    assert resumed.returncode == 0, resumed.stderr
    assert weight_hashes(out) == weight_hashes(runs["rtn-lora"])
    assert (out / LORA_FILE).read_bytes() == (runs["rtn-lora"] / LORA_FILE).read_bytes()


def test_lora_with_nothing_compressed_before_it_is_refused_in_one_line(runs, tmp_path):
    recipe = _recipe(tmp_path, [{"method": "rotate"}, LORA], "nothing")
    result = _run(recipe, runs["source"], tmp_path / "x")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr
    assert "lora" in result.stderr and not (tmp_path / "x").exists()
