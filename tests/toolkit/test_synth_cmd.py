"""`toolkit synth` and the large-shape table of `toolkit models`."""

from __future__ import annotations

import json

import pytest

from models.errors import ModelError
from models.large_shapes import large_shapes, shape_named


@pytest.fixture(scope="module")
def needs_tokenizer():
    from models.synthetic_tokenizer import smollm2_tokenizer_dir

    try:
        return smollm2_tokenizer_dir()
    except ModelError as exc:
        pytest.skip(str(exc))


def test_unknown_shape_is_one_line_listing_the_shapes(toolkit_cli, tmp_path):
    result = toolkit_cli("synth", "llama-9b", "--out", tmp_path / "x")
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert "llama-9b" in result.err and "afm-3b" in result.err and "mistral-7b" in result.err
    assert not (tmp_path / "x").exists()


def test_synth_writes_a_checkpoint_and_a_summary(toolkit_cli, tmp_path, needs_tokenizer):
    out = tmp_path / "tiny"
    result = toolkit_cli("synth", "tiny-mistral-test", "--out", out, "--layers", "2",
                         "--dtype", "float32", "--seed", "5", "--max-shard-bytes", "2000000",
                         "--quiet")
    assert result.code == 0, result.err
    shape = shape_named("tiny-mistral-test").with_layers(2)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["num_hidden_layers"] == 2 and config["torch_dtype"] == "float32"
    index = json.loads((out / "model.safetensors.index.json").read_text(encoding="utf-8"))
    assert index["metadata"]["total_size"] == shape.param_count() * 4
    shards = len(set(index["weight_map"].values()))
    line = result.out.strip()
    assert "\n" not in line
    assert f"{shape.param_count() / 1e6:.2f}M params" in line and "2 layers" in line
    assert f"{shards} shard(s)" in line and shards == 3  # embedding, head, blocks
    assert json.loads((out / "synthetic.json").read_text(encoding="utf-8"))["seed"] == 5


def test_existing_out_needs_overwrite(toolkit_cli, tmp_path, needs_tokenizer):
    out = tmp_path / "tiny"
    out.mkdir()
    result = toolkit_cli("synth", "tiny-llama-test", "--out", out, "--layers", "1")
    assert result.code == 2 and "--overwrite" in result.err
    result = toolkit_cli("synth", "tiny-llama-test", "--out", out, "--layers", "1",
                         "--overwrite", "--quiet")
    assert result.code == 0, result.err
    assert (out / "config.json").is_file()


def test_bad_layers_and_dtype_are_refused(toolkit_cli, tmp_path):
    assert toolkit_cli("synth", "afm-3b", "--out", tmp_path / "a", "--layers", "0").code == 2
    assert toolkit_cli("synth", "afm-3b", "--out", tmp_path / "a", "--dtype", "int8").code == 2


def test_models_lists_the_large_shapes(toolkit_cli, tmp_path):
    result = toolkit_cli("models", "--json", tmp_path / "m.json")
    assert result.code == 0, result.err
    for shape in large_shapes(include_test=False):
        assert shape.name in result.out
    assert "tiny-llama-test" not in result.out
    assert "2.730B" in result.out and "7.242B" in result.out  # afm-3b, mistral-7b
    listed = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["shapes"]
    llama = next(s for s in listed if s["name"] == "llama-3.2-3b")
    assert llama["params"] == shape_named("llama-3.2-3b").param_count()
    assert llama["bf16_gb"] == pytest.approx(llama["params"] * 2 / 1e9)
    assert (llama["heads"], llama["kv_heads"], llama["tied"]) == (24, 8, True)

    result = toolkit_cli("models", "--all", "--json", tmp_path / "all.json")
    assert "tiny-llama-test (test)" in result.out and "tiny-mistral-test (test)" in result.out
    listed = json.loads((tmp_path / "all.json").read_text(encoding="utf-8"))["shapes"]
    assert {s["name"] for s in listed if s["test_only"]} == {"tiny-llama-test",
                                                             "tiny-mistral-test"}


def test_help_lists_every_option(toolkit_cli):
    result = toolkit_cli("synth", "--help")
    assert result.code == 0
    for option in ("--out", "--dtype", "--seed", "--layers", "--max-shard-bytes",
                   "--overwrite", "--quiet"):
        assert option in result.out, option
