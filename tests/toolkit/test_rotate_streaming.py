"""`rotate` under the streaming engine (compress/rotate/streaming_stage.py): a streamed
rotate + GPTQ writes the in-memory engine's tensors, a tied head comes out untied in both,
and a run killed between blocks resumes to the same bytes."""

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

from tests.toolkit.streaming_helpers import all_tensors, tiny_checkpoint, weight_hashes

REPO = Path(__file__).resolve().parents[2]
RECIPE = {"calibration": {"samples": 2, "seq_len": 16, "seed": 0},
          "stages": [{"method": "rotate", "seed": 3},
                     {"method": "gptq", "bits": 4, "group_size": 32}]}
ARGS = ["--no-eval", "--quiet"]
# `toolkit run` has no --threads: one thread through the environment, so float sums are
# ordered the same in every process
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("src") / "tiny", layers=4)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "rotate-gptq.yaml"
    path.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    return path


def _run(source: Path, recipe: Path, out: Path, engine: str, crash: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "EDGE_TOOLKIT_CRASH_AT"}
    env.update(ONE_THREAD, **({"EDGE_TOOLKIT_CRASH_AT": crash} if crash else {}))
    return subprocess.run([sys.executable, "-m", "toolkit", "run", str(recipe), "--model",
                           str(source), "--engine", engine, "--out", str(out), *ARGS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def streamed(source, recipe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("streamed") / "out"
    result = _run(source, recipe, out, "streaming")
    assert result.returncode == 0, result.stderr
    return out


def test_streamed_rotate_gptq_equals_the_in_memory_engine(source, recipe, streamed,
                                                          tmp_path):
    memory = tmp_path / "memory"
    result = _run(source, recipe, memory, "memory")
    assert result.returncode == 0, result.stderr
    a, b = all_tensors(memory), all_tensors(streamed)
    assert set(a) == set(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    source_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    for out in (memory, streamed):
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        assert config["tie_word_embeddings"] is False
    if source_config.get("tie_word_embeddings"):
        assert "lm_head.weight" in b  # the untied head is its own tensor now
    manifest = json.loads((streamed / "toolkit.json").read_text(encoding="utf-8"))
    rotate = manifest["stages"][0]["report"]
    assert rotate["rotation"] == "hadamard" and rotate["seed"] == 3
    reference = json.loads((memory / "toolkit.json").read_text(encoding="utf-8"))
    assert rotate["linears"] == reference["stages"][0]["report"]["linears"]


def test_streamed_rotation_keeps_the_models_function(source, streamed):
    """The rotated float model (before GPTQ) computes the source's logits: checked on the
    streamed artifact's float parts by rotating the source in memory with the same seed
    and comparing the head and table it writes."""
    import models
    from compress.rotate.rotate import RotateConfig, rotate_model

    loaded = models.load_model(str(source))
    reference = loaded.module
    rotate_model(reference, RotateConfig(seed=3))
    written = all_tensors(streamed)
    state = reference.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(written[name], state[name].to(written[name].dtype)), name


def test_a_killed_streamed_rotation_resumes_to_the_same_bytes(source, recipe, streamed,
                                                              tmp_path):
    out = tmp_path / "out"
    killed = _run(source, recipe, out, "streaming", crash="after-journal:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(source, recipe, out, "streaming")
    assert resumed.returncode == 0, resumed.stderr
    assert weight_hashes(out) == weight_hashes(streamed)
