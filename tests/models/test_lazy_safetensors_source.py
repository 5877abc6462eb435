"""The lazy safetensors source (models/lazy/safetensors_source.py) against safetensors' own
reader: every dtype, single file and sharded, raw bytes, row gathers, the fingerprint, each
damaged input refused at construction, and the resident memory one read costs."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.errors import ModelError
from models.lazy.safetensors_source import (
    TORCH_DTYPES,
    SafetensorsSource,
    open_safetensors_source,
    tensor_bytes_sha256,
)

INDEX = "model.safetensors.index.json"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
REPO = Path(__file__).resolve().parents[2]


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    return torch.randint(0, 120, shape, generator=g).to(dtype)


def every_dtype() -> dict[str, torch.Tensor]:
    tensors = {f"t.{name}": sample(dtype, (7, 5), i) for i, (name, dtype)
               in enumerate(TORCH_DTYPES.items())}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    return tensors


def as_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def header_of(path: Path) -> tuple[int, dict]:
    """An independent parse: (data start, header entries)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return 8 + length, json.loads(raw[8:8 + length])


def stored_bytes(path: Path, name: str) -> bytes:
    start, header = header_of(path)
    begin, end = header[name]["data_offsets"]
    return path.read_bytes()[start + begin:start + end]


@pytest.fixture
def single(tmp_path: Path) -> Path:
    save_file(every_dtype(), tmp_path / "model.safetensors", metadata={"format": "pt"})
    return tmp_path


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    """Two shards and their index, as transformers writes them."""
    parts = ({"model.embed_tokens.weight": sample(torch.bfloat16, (50, 8), 1),
              "model.layers.0.mlp.up_proj.weight": sample(torch.float16, (16, 8), 2)},
             {"model.layers.1.mlp.up_proj.weight": sample(torch.float32, (16, 8), 3),
              "model.norm.weight": sample(torch.float32, (8,), 4),
              "lm_head.ids": sample(torch.int64, (3, 3), 5)})
    weight_map = {}
    for shard, part in zip(SHARDS, parts, strict=True):
        save_file(part, tmp_path / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (tmp_path / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tmp_path


def test_read_matches_safetensors_for_every_dtype(single: Path) -> None:
    expected = load_file(single / "model.safetensors")
    with open_safetensors_source(single) as source:
        infos = source.infos()
        assert set(infos) == set(expected)
        for name, want in expected.items():
            got = source.read(name)
            assert infos[name].dtype == want.dtype and infos[name].shape == tuple(want.shape)
            assert infos[name].nbytes == want.numel() * want.element_size()
            assert infos[name].file == "model.safetensors"
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert as_bytes(got) == as_bytes(want), name
    assert {str(t.dtype) for t in expected.values()} >= {
        "torch.bfloat16", "torch.float16", "torch.float32", "torch.int8", "torch.uint8",
        "torch.int32", "torch.int64", "torch.bool"}


def test_read_returns_memory_the_caller_owns(single: Path) -> None:
    before = (single / "model.safetensors").read_bytes()
    source = SafetensorsSource(single)
    tensor = source.read("t.F32")
    source.close()
    tensor.add_(1.0)  # a view of a read-only map would fault here
    assert (single / "model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="closed"):
        source.read("t.F32")


def test_sharded_read_raw_and_fingerprint(sharded: Path) -> None:
    source = SafetensorsSource(sharded)
    infos = source.infos()
    for shard in SHARDS:
        for name, want in load_file(sharded / shard).items():
            assert infos[name].file == shard
            assert torch.equal(source.read(name), want), name
            assert source.raw(name) == stored_bytes(sharded / shard, name)
            assert b"".join(source.raw_chunks(name, chunk_bytes=7)) == source.raw(name)
    names = ["model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight"]
    digest = hashlib.sha256()
    for name, shard in zip(names, reversed(SHARDS), strict=True):
        want = load_file(sharded / shard)[name]
        shape = ",".join(map(str, want.shape))
        digest.update(f"{name} {want.dtype} [{shape}] {want.numel() * want.element_size()}\n"
                      .encode())
        digest.update(stored_bytes(sharded / shard, name))
    assert tensor_bytes_sha256(source, names) == digest.hexdigest()
    # The order and the split of bytes between tensors both change the fingerprint.
    assert tensor_bytes_sha256(source, names[::-1]) != digest.hexdigest()


def test_rows_gathers_like_indexing(sharded: Path) -> None:
    source = SafetensorsSource(sharded)
    name = "model.embed_tokens.weight"
    table = load_file(sharded / SHARDS[0])[name]
    ids = torch.tensor([[3, 49, 3, 0], [7, 7, 12, 1]])
    got = source.rows(name, ids)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 4, 8)
    assert torch.equal(got, table[ids])
    assert torch.equal(source.rows(name, torch.tensor([5], dtype=torch.int32)), table[[5]])
    assert source.rows(name, torch.tensor([], dtype=torch.long)).shape == (0, 8)
    with pytest.raises(ModelError, match="row 50 .* 50 rows"):
        source.rows(name, torch.tensor([1, 50]))
    with pytest.raises(ValueError, match="2-D"):
        source.rows("model.norm.weight", torch.tensor([0]))


def test_a_single_file_path_works_too(single: Path) -> None:
    source = SafetensorsSource(single / "model.safetensors")
    assert torch.equal(source.read("t.I32"), load_file(single / "model.safetensors")["t.I32"])


# --- damaged inputs: refused at construction, one line naming the file and the fix -------


def truncate_mid_tensor(model: Path) -> None:
    shard = model / SHARDS[0]
    os.truncate(shard, shard.stat().st_size - 10)


def edit_index(edit) -> callable:
    def damage(model: Path) -> None:
        index = json.loads((model / INDEX).read_text())
        edit(index["weight_map"])
        (model / INDEX).write_text(json.dumps(index))
    return damage


def rewrite_header(edit) -> callable:
    """Rewrite shard 2's header (keeping its data bytes) through `edit(header) -> bytes`."""
    def damage(model: Path) -> None:
        shard = model / SHARDS[1]
        start, header = header_of(shard)
        body = edit(header)
        shard.write_bytes(struct.pack("<Q", len(body)) + body + shard.read_bytes()[start:])
    return damage


def overlap(header: dict) -> bytes:
    """The last tensor moved 8 bytes back: it shares them with the one before."""
    last = max((n for n in header if n != "__metadata__"),
               key=lambda n: header[n]["data_offsets"][0])
    header[last]["data_offsets"] = [x - 8 for x in header[last]["data_offsets"]]
    return json.dumps(header).encode()


def past_the_end(header: dict) -> bytes:
    begin, end = header["model.norm.weight"]["data_offsets"]
    header["model.norm.weight"]["data_offsets"] = [begin + 10_000, end + 10_000]
    return json.dumps(header).encode()


DAMAGES = {
    "truncated shard": (truncate_mid_tensor, (SHARDS[0], "truncated", "re-download")),
    "deleted shard": (lambda m: (m / SHARDS[1]).unlink(),
                      (SHARDS[1], "missing", "re-download")),
    "index names a tensor no shard holds": (
        edit_index(lambda w: w.update({"model.layers.9.mlp.up_proj.weight": SHARDS[1]})),
        ("model.layers.9.mlp.up_proj.weight", SHARDS[1], "restore the shard")),
    "index not JSON": (lambda m: (m / INDEX).write_text("{ weight_map"),
                       (INDEX, "not valid JSON", "restore")),
    "header not JSON": (rewrite_header(lambda h: b"{not json" + b" " * 40),
                        (SHARDS[1], "not JSON", "re-download")),
    "overlapping offsets": (rewrite_header(overlap), (SHARDS[1], "overlap", "re-download")),
    "offsets past the end": (rewrite_header(past_the_end),
                             (SHARDS[1], "truncated", "re-download")),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_damaged_checkpoint_is_refused_in_one_line(sharded: Path, damage: str) -> None:
    make, needles = DAMAGES[damage]
    make(sharded)
    with pytest.raises(ModelError) as caught:
        SafetensorsSource(sharded)
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_a_shard_cut_after_opening_is_an_error_not_a_crash(sharded: Path) -> None:
    source = SafetensorsSource(sharded)
    truncate_mid_tensor(sharded)
    with pytest.raises(ModelError, match=f"{SHARDS[0]} changed on disk"):
        source.read("model.layers.0.mlp.up_proj.weight")


def test_unknown_tensor_and_missing_folder(sharded: Path) -> None:
    source = SafetensorsSource(sharded)
    with pytest.raises(ModelError, match="holds no tensor 'nope'"):
        source.read("nope")
    with pytest.raises(ModelError, match="does not exist"):
        SafetensorsSource(sharded / "elsewhere")


# --- resident memory ----------------------------------------------------------------------

_PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from models.lazy.safetensors_source import SafetensorsSource

    def peak_mib():
        # VmHWM: this process's own peak resident size. ru_maxrss would do from a shell,
        # but Linux carries the parent's peak across fork and exec into it, and the
        # parent here is pytest holding the 200 MB tensor it just saved.
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB

    source = SafetensorsSource(Path(sys.argv[1]))
    source.read("small"), source.read("small")  # warm up lazy imports
    start = peak_mib()
    small = source.read("small")
    after_small = peak_mib()
    big = source.read("big")
    after_big = peak_mib()
    print(after_small - start, after_big - after_small, float(big[-1]), float(small[3]))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and paging are Linux's")
def test_one_small_read_does_not_make_the_shard_resident(tmp_path: Path) -> None:
    """A ~200 MB shard holding a small and a big tensor: reading the small one raises the
    peak resident size of a fresh process by far less than the shard, and reading the big
    one costs about the tensor once (plus one 16 MiB mapped window), not twice as a
    whole-shard map then `.clone()` would (measured: +389 MiB for this 191 MiB tensor)."""
    big_mib = 50_000_000 * 4 / 2**20
    save_file({"big": torch.full((50_000_000,), 2.0), "small": torch.arange(1000.0)},
              tmp_path / "model.safetensors")
    result = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=True)
    small_growth, big_growth, big_last, small_3 = map(float, result.stdout.split())
    assert (big_last, small_3) == (2.0, 3.0)
    assert small_growth < 8, result.stdout
    assert 0.9 * big_mib < big_growth < big_mib + 40, result.stdout
