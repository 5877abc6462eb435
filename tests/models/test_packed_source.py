"""PackedSource (models/lazy/packed_source.py) against the in-memory loader, on RTN
artifacts of the fake Llama made by `toolkit compress`: 4-bit (compressed-tensors,
`model.safetensors`) and 3-bit (Edge Toolkit's own packing, `edge_toolkit_quantized
.safetensors`); and both re-written as one shard per block by the streaming engine's
ShardedWriter, which the in-memory loader and PackedSource must read to the same weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

import models
from models.errors import ModelError
from models.lazy.atomic_file import write_atomically
from models.lazy.packed_source import PackedSource, open_weights_source
from models.lazy.safetensors_source import SafetensorsSource
from models.lazy.shard_writer import ShardedWriter
from models.quantized_loader import EDGE_INDEX_FILE, EDGE_ONLY_FILE
from tests.toolkit.test_cli import SMALL

LINEAR = "model.layers.1.mlp.down_proj"
_WEIGHT_FILES = (".safetensors", ".safetensors.index.json")


def rtn_artifact(toolkit_cli, model_dir: Path, out: Path, bits: int) -> Path:
    result = toolkit_cli("compress", "--model", model_dir, "--method", "rtn", "--bits", bits,
                         "--group-size", "32", "--out", out, "--no-eval", *SMALL)
    assert result.code == 0, result.err
    return out


@pytest.fixture(scope="module")
def artifacts(toolkit_cli, fake_model_dir, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("packed")
    return {"ct": rtn_artifact(toolkit_cli, fake_model_dir, tmp / "rtn4", 4),
            "edge": rtn_artifact(toolkit_cli, fake_model_dir, tmp / "rtn3", 3)}


def sharded_copy(artifact: Path, out: Path) -> Path:
    """`artifact` re-written as the streaming job writes it (toolkit/streaming/job.py):
    shard i+1 block i with its quantized linears packed, the last shard the tensors outside
    the blocks, then the index; config and tokenizer copied (no toolkit.json: a plain
    Hugging Face directory)."""
    loaded = models.load_model(str(artifact))
    out.mkdir()
    for item in artifact.iterdir():
        if item.suffix in (".json", ".jinja") and item.name != "toolkit.json" \
                and not item.name.endswith(_WEIGHT_FILES):
            shutil.copy(item, out / item.name)
    state = {k: v for k, v in loaded.module.state_dict().items() if k != "lm_head.weight"}
    n_blocks = loaded.module.config.num_hidden_layers
    writer = ShardedWriter(out, n_blocks + 1)

    def write(number: int, tensors: dict, quantized: dict) -> None:
        shard, metadata, record = writer.prepare(tensors, quantized)
        write_atomically(out / writer.add(number, record), save(shard, metadata=metadata))

    for i in range(n_blocks):
        prefix = f"model.layers.{i}."
        write(i + 1, {k: v for k, v in state.items() if k.startswith(prefix)},
              {k: q for k, q in loaded.quantized.items() if k.startswith(prefix)})
    write(n_blocks + 1, {k: v for k, v in state.items() if not k.startswith("model.layers.")},
          {})
    writer.finish()
    return out


@pytest.fixture(scope="module")
def sharded(artifacts, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("sharded")
    return {kind: sharded_copy(path, tmp / kind) for kind, path in artifacts.items()}


def _check_source_matches_loader(directory: Path, reference: Path) -> None:
    """Every tensor PackedSource presents equals the module `models.load_model` builds from
    `reference`, and the packed forms are the loader's."""
    loaded = models.load_model(str(reference))
    state = loaded.module.state_dict()
    with PackedSource(directory) as source:
        infos = source.infos()
        assert set(source.packed_names()) == set(loaded.quantized)
        assert set(infos) == set(state) - {"lm_head.weight"}  # the tied head is stored once
        for name, info in infos.items():
            tensor = source.read(name)
            assert tensor.dtype == info.dtype and tuple(tensor.shape) == info.shape
            assert torch.equal(tensor.float(), state[name]), name
        assert infos[f"{LINEAR}.weight"].dtype == torch.float32
        assert not any(n.startswith(f"{LINEAR}.") and not n.endswith(".weight") for n in infos)
        packed, expected = source.packed(LINEAR), loaded.quantized[LINEAR]
        assert torch.equal(packed.codes, expected.codes)
        assert torch.equal(packed.scales, expected.scales)
        assert torch.equal(source.read(f"{LINEAR}.weight"), packed.dequantize())
        raw = source.raw(f"{LINEAR}.weight")
        assert raw == packed.dequantize().numpy().tobytes()
        rows = source.rows("model.embed_tokens.weight", torch.tensor([3, 0, 3]))
        assert torch.equal(rows, state["model.embed_tokens.weight"][[3, 0, 3]])


@pytest.mark.parametrize("kind", ["ct", "edge"])
def test_single_file_artifact_reads_like_the_loader(artifacts, kind):
    directory = artifacts[kind]
    weights = "model.safetensors" if kind == "ct" else EDGE_ONLY_FILE
    assert (directory / weights).is_file()
    _check_source_matches_loader(directory, directory)


def test_dequantized_weight_is_the_formula_on_stored_codes(artifacts):
    """Independent of the qformat code: Edge Toolkit's 3-bit packing is a little-endian
    bit stream of codes; W = scale * (code - zero) per group of 32 inputs."""
    directory = artifacts["edge"]
    stored = load_file(str(directory / EDGE_ONLY_FILE))
    meta = PackedSource(directory).layers[LINEAR]
    out_f, in_f = meta["shape"]
    packed = stored[f"{LINEAR}.qweight"].to(torch.int64)
    bits = torch.stack([(packed >> k) & 1 for k in range(8)], dim=1).reshape(-1)

    def codes_of(stream: torch.Tensor, count: int) -> torch.Tensor:
        triples = stream[: count * 3].view(count, 3)
        return triples[:, 0] + 2 * triples[:, 1] + 4 * triples[:, 2]

    codes = codes_of(bits, out_f * in_f).view(out_f, in_f).float()
    zbytes = stored[f"{LINEAR}.qzeros"].to(torch.int64)
    zbits = torch.stack([(zbytes >> k) & 1 for k in range(8)], dim=1).reshape(-1)
    scales = stored[f"{LINEAR}.scales"].float()
    zeros = codes_of(zbits, scales.numel()).view(scales.shape).float()
    expected = scales.repeat_interleave(32, 1) * (codes - zeros.repeat_interleave(32, 1))
    assert torch.equal(PackedSource(directory).read(f"{LINEAR}.weight"), expected)


@pytest.mark.parametrize("kind", ["ct", "edge"])
def test_sharded_artifact_loads_in_memory_and_lazily(artifacts, sharded, kind):
    directory = sharded[kind]
    shards = sorted(p.name for p in directory.glob("*.safetensors"))
    stem = "model" if kind == "ct" else "edge_toolkit_quantized"
    assert len(shards) == 3 and all(s.startswith(stem + "-") for s in shards)
    if kind == "edge":
        assert (directory / EDGE_INDEX_FILE).is_file()
    single = models.load_model(str(artifacts[kind]))
    again = models.load_model(str(directory))  # the extended in-memory loader
    assert set(again.quantized) == set(single.quantized)
    for name, tensor in single.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[name], tensor), name
    _check_source_matches_loader(directory, artifacts[kind])
    assert isinstance(open_weights_source(directory), PackedSource)


def test_open_weights_source_picks_the_reader(fake_model_dir, artifacts):
    assert isinstance(open_weights_source(fake_model_dir), SafetensorsSource)
    assert isinstance(open_weights_source(artifacts["ct"]), PackedSource)
    assert isinstance(open_weights_source(artifacts["edge"]), PackedSource)
    with pytest.raises(ModelError, match="no packed"):
        PackedSource(fake_model_dir)


def test_edge_index_naming_a_missing_shard_is_refused(sharded, tmp_path):
    directory = tmp_path / "edge"
    shutil.copytree(sharded["edge"], directory)
    victim = sorted(directory.glob("edge_toolkit_quantized-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ModelError, match="missing shard"):
        open_weights_source(directory)


def test_two_shards_describing_one_linear_is_refused(sharded, tmp_path):
    """A layout entry copied into a second shard's metadata: the loader must not guess."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    directory = tmp_path / "ct"
    shutil.copytree(sharded["ct"], directory)
    first, second = sorted(directory.glob("model-*.safetensors"))[:2]
    with safe_open(str(first), framework="pt") as handle:
        meta_first = handle.metadata()
    with safe_open(str(second), framework="pt") as handle:
        meta_second = handle.metadata()
    tensors = load_file(str(second))
    layout = json.loads(meta_second["edge_toolkit.quantization"])
    layout["layers"].update(json.loads(meta_first["edge_toolkit.quantization"])["layers"])
    save_file(tensors, second, metadata={**meta_second,
                                         "edge_toolkit.quantization": json.dumps(layout)})
    with pytest.raises(ModelError, match="described by both"):
        models.load_model(str(directory))
