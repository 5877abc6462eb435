"""Damaged checkpoints and unsupported architectures, tried as a careless user and as an
attacker would: each failure class damages a copy of the fake Llama (HF directory or
GGUF), and both `models.load_model` and the CLI (`toolkit eval`, `toolkit compress`) must
refuse it with one line that names the input and the fix, exit 2, and write nothing.

One table, CASES; a new failure class is one entry. The control entries prove that the
damage, not the copying, is what the loader refuses.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import models
from models import ModelError, load_model

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


@dataclasses.dataclass(frozen=True)
class Sources:
    hf_dir: Path
    gguf: Path | None


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    # Builds the damaged input under the given folder and returns the path to load.
    make: Callable[[Path, Sources], Path]
    # Every one of these must appear in the message (besides the input's path).
    needles: tuple[str, ...]
    # ...and none of these (e.g. a missing shard must not blame config.json).
    absent: tuple[str, ...] = ()


# --- ways to damage a copy of the fake Llama ---------------------------------------------


def copy_dir(root: Path, sources: Sources) -> Path:
    model = root / "model"
    shutil.copytree(sources.hf_dir, model)
    return model


def edit_tensors(edit: Callable[[dict[str, torch.Tensor]], None]):
    def make(root: Path, sources: Sources) -> Path:
        model = copy_dir(root, sources)
        tensors = load_file(model / WEIGHTS)
        edit(tensors)
        save_file(tensors, model / WEIGHTS, metadata={"format": "pt"})
        return model
    return make


def edit_config(**changes):
    def make(root: Path, sources: Sources) -> Path:
        model = copy_dir(root, sources)
        config = json.loads((model / "config.json").read_text(encoding="utf-8"))
        config.update(changes)
        (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return model
    return make


def replace_config(config: dict):
    def make(root: Path, sources: Sources) -> Path:
        model = copy_dir(root, sources)
        (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return model
    return make


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


def hand_written(overlap_last: int = 0, trailing: bytes = b""):
    """The checkpoint re-written by hand, tensors laid end to end, except that the last
    tensor starts `overlap_last` bytes before the previous one ends (the shared bytes are
    stored once) and `trailing` bytes that belong to no tensor follow the data."""
    def make(root: Path, sources: Sources) -> Path:
        model = copy_dir(root, sources)
        tensors = load_file(model / WEIGHTS)
        header, data = {}, b""
        for i, (name, tensor) in enumerate(sorted(tensors.items())):
            raw = tensor.contiguous().numpy().tobytes()
            begin = len(data) - (overlap_last if i == len(tensors) - 1 else 0)
            header[name] = {"dtype": "F32", "shape": list(tensor.shape),
                            "data_offsets": [begin, begin + len(raw)]}
            data = data[:begin] + raw
        (model / WEIGHTS).write_bytes(safetensors_bytes(header, data + trailing))
        return model
    return make


def truncated(root: Path, sources: Sources) -> Path:
    model = copy_dir(root, sources)
    data = (model / WEIGHTS).read_bytes()
    (model / WEIGHTS).write_bytes(data[: len(data) * 2 // 3])
    return model


def sharded(root: Path, sources: Sources) -> Path:
    """The checkpoint split into two shards with an index, as save_pretrained shards it."""
    model = copy_dir(root, sources)
    tensors = load_file(model / WEIGHTS)
    (model / WEIGHTS).unlink()
    names = sorted(tensors)
    halves = (names[: len(names) // 2], names[len(names) // 2:])
    weight_map = {}
    for shard, half in zip(SHARDS, halves, strict=True):
        save_file({n: tensors[n] for n in half}, model / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(half, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (model / INDEX).write_text(json.dumps(index), encoding="utf-8")
    return model


def sharded_then(damage: Callable[[Path], None]):
    def make(root: Path, sources: Sources) -> Path:
        model = sharded(root, sources)
        damage(model)
        return model
    return make


def edit_index(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        index = json.loads((model / INDEX).read_text(encoding="utf-8"))
        edit(index["weight_map"])
        (model / INDEX).write_text(json.dumps(index), encoding="utf-8")
    return damage


def first_tensor_of(shard: str) -> Callable[[dict], str]:
    return lambda weight_map: sorted(k for k, v in weight_map.items() if v == shard)[0]


def move_in_index(weight_map: dict) -> None:
    weight_map[first_tensor_of(SHARDS[1])(weight_map)] = SHARDS[0]


def drop_from_index_and_shard(model: Path) -> None:
    """The index and its shard agree, and both lack a tensor the config needs."""
    index = json.loads((model / INDEX).read_text(encoding="utf-8"))
    shard = index["weight_map"].pop(UP)
    (model / INDEX).write_text(json.dumps(index), encoding="utf-8")
    tensors = load_file(model / shard)
    del tensors[UP]
    save_file(tensors, model / shard, metadata={"format": "pt"})


def gguf_edit(edit: Callable[[bytearray], None]):
    def make(root: Path, sources: Sources) -> Path:
        if sources.gguf is None:
            pytest.skip("the `gguf` package is not installed")
        data = bytearray(sources.gguf.read_bytes())
        edit(data)
        root.mkdir(parents=True, exist_ok=True)
        path = root / "damaged.gguf"
        path.write_bytes(bytes(data))
        return path
    return make


def gguf_string(data: bytearray, text: bytes) -> int:
    """Offset of the GGUF string `text` (u64 length + bytes) in the header."""
    return data.index(struct.pack("<Q", len(text)) + text)


def rename_gguf_tensor(data: bytearray) -> None:
    at = gguf_string(data, b"blk.1.ffn_norm.weight") + 8
    data[at:at + 21] = b"blk.1.ffn_norx.weight"  # same length: the file stays well-formed


def huge_gguf_string_length(data: bytearray) -> None:
    data[gguf_string(data, b"<unk>") + 7] = 0xE0  # top byte of the u64 length


def cut_gguf(data: bytearray) -> None:
    del data[len(data) // 2:]


# all-MiniLM-L6-v2's config.json: a BERT encoder that AutoModelForCausalLM would load as
# BertLMHeadModel with a randomly initialised head.
MINILM_CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384,
    "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
    "vocab_size": 30522, "max_position_embeddings": 512, "hidden_act": "gelu",
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
}
T5_CONFIG = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
             "d_model": 64, "num_layers": 2, "num_heads": 4, "vocab_size": 259}
RESTORE = "restore the checkpoint"
SUPPORTED = "Llama, Mistral, Qwen2, Gemma"
UP = "model.layers.1.mlp.up_proj.weight"

CASES = [
    # -- tensors the config needs ----------------------------------------------------------
    Case("missing-tensor", edit_tensors(lambda t: t.pop(UP)), (UP, WEIGHTS, RESTORE)),
    Case("wrong-shape", edit_tensors(lambda t: t.__setitem__(UP, torch.zeros(64, 64))),
         (UP, "[64, 64]", "[128, 64]")),
    Case("untied-head-absent", edit_config(tie_word_embeddings=False),
         ("lm_head.weight", WEIGHTS, RESTORE)),
    Case("integer-dtype", edit_tensors(
        lambda t: t.__setitem__("model.norm.weight", t["model.norm.weight"].int())),
        ("model.norm.weight", "I32", RESTORE)),
    Case("tensors-config-does-not-describe", edit_config(num_hidden_layers=1),
         ("model.layers.1.", "does not describe", "config.json")),
    # -- the safetensors file itself ---------------------------------------------------
    Case("overlapping-byte-ranges", hand_written(overlap_last=16), ("overlap", WEIGHTS)),
    Case("bytes-outside-every-tensor", hand_written(trailing=b"\x00" * 64),
         ("belong to no tensor", WEIGHTS)),
    Case("truncated-file", truncated, ("truncated", WEIGHTS)),
    # -- sharded checkpoints ---------------------------------------------------------------
    Case("missing-shard", sharded_then(lambda m: (m / SHARDS[1]).unlink()),
         (f"restore the shard {SHARDS[1]}",), absent=("config.json",)),
    Case("index-names-tensor-shard-lacks", sharded_then(edit_index(move_in_index)),
         (SHARDS[0], "lacks", f"restore the shard {SHARDS[0]}")),
    Case("index-not-json", sharded_then(lambda m: (m / INDEX).write_text("{ weight_map")),
         (INDEX, "not valid JSON")),
    Case("index-not-an-object", sharded_then(lambda m: (m / INDEX).write_text("[1]")),
         (INDEX, "not a JSON object")),
    Case("index-points-outside-directory", sharded_then(edit_index(
        lambda w: w.update(dict.fromkeys(w, "../model.safetensors")))),
        (INDEX, "../model.safetensors", "same directory")),
    Case("tensor-missing-from-every-shard", sharded_then(drop_from_index_and_shard),
         (UP, RESTORE)),
    # -- nonsense config values ------------------------------------------------------------
    Case("negative-layers", edit_config(num_hidden_layers=-1), ("num_hidden_layers = -1",)),
    Case("zero-layers", edit_config(num_hidden_layers=0), ("num_hidden_layers = 0",)),
    Case("huge-layers", edit_config(num_hidden_layers=10**9),
         ("num_hidden_layers = 1000000000",)),
    Case("hidden-not-divisible", edit_config(hidden_size=65, head_dim=None),
         ("hidden_size = 65", "num_attention_heads = 4")),
    Case("kv-heads-not-dividing", edit_config(num_key_value_heads=3),
         ("num_attention_heads = 4", "num_key_value_heads = 3")),
    Case("zero-vocab", edit_config(vocab_size=0), ("vocab_size = 0",)),
    Case("string-layers", edit_config(num_hidden_layers="2"), ('num_hidden_layers = "2"',)),
    Case("float-hidden", edit_config(hidden_size=64.0), ("hidden_size = 64.0",)),
    Case("boolean-heads", edit_config(num_attention_heads=True),
         ("num_attention_heads = true",)),
    Case("config-not-an-object", replace_config([1, 2]), ("config.json", "not a JSON object")),
    # -- architectures the toolkit does not support ----------------------------------------
    Case("encoder-minilm", replace_config(MINILM_CONFIG), ('"bert"', "BertModel", SUPPORTED)),
    Case("encoder-masked-lm", edit_config(model_type="bert", architectures=["BertForMaskedLM"]),
         ("BertForMaskedLM", SUPPORTED)),
    Case("seq2seq-t5", replace_config(T5_CONFIG), ("T5ForConditionalGeneration", SUPPORTED)),
    Case("unknown-model-type", edit_config(model_type="no-such-model"),
         ("no-such-model", SUPPORTED)),
    Case("base-model-without-head", edit_config(architectures=["LlamaModel"]),
         ("LlamaModel", "LlamaForCausalLM", "never adds")),
    # -- GGUF ------------------------------------------------------------------------------
    Case("gguf-renamed-tensor", gguf_edit(rename_gguf_tensor),
         ("model.layers.1.post_attention_layernorm.weight", RESTORE)),
    Case("gguf-huge-string-length", gguf_edit(huge_gguf_string_length),
         ("truncated or corrupt",)),
    Case("gguf-truncated", gguf_edit(cut_gguf), ("truncated or corrupt",)),
]
IDS = [case.id for case in CASES]


@pytest.fixture(scope="module")
def sources(fake_model_dir, request) -> Sources:
    try:
        gguf = request.getfixturevalue("fake_gguf_file")
    except pytest.skip.Exception:
        gguf = None
    return Sources(fake_model_dir, gguf)


def assert_names_input_and_fix(message: str, case: Case, path: Path) -> None:
    assert "\n" not in message.strip()
    assert str(path) in message
    for needle in case.needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    for needle in case.absent:
        assert needle not in message, f"{needle!r} in {message!r}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_load_model_refuses(case: Case, sources: Sources, tmp_path):
    path = case.make(tmp_path, sources)
    with pytest.raises(ModelError) as info:
        load_model(str(path))
    assert_names_input_and_fix(str(info.value), case, path)


@pytest.mark.parametrize("command", ["eval", "compress"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cli_refuses_in_one_line_and_writes_nothing(case: Case, command: str,
                                                    sources: Sources, tmp_path, toolkit_cli):
    path = case.make(tmp_path / "input", sources)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    argv = (["eval", path] if command == "eval"
            else ["compress", "--model", path, "--out", outputs / "artifact"])
    result = toolkit_cli(*argv, "--json", outputs / "result.json")
    assert result.code == 2, result.err
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith(f"toolkit {command}: error: ")
    assert_names_input_and_fix(result.err_lines[0], case, path)
    assert list(outputs.iterdir()) == []


# --- controls: the same copies, undamaged, load with the original weights -----------------


def assert_same_weights(loaded, original) -> None:
    state = loaded.module.state_dict()
    for name, tensor in original.module.state_dict().items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)


def with_saved_rope_table(root: Path, sources: Sources) -> Path:
    """Old Llama checkpoints saved each block's RoPE table, which transformers recomputes."""
    return edit_tensors(lambda t: t.__setitem__(
        "model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8)))(root, sources)


@pytest.mark.parametrize("make", [copy_dir, sharded, hand_written(), with_saved_rope_table],
                         ids=["copy", "sharded", "hand-written", "saved-rope-table"])
def test_undamaged_copies_load_the_original_weights(make, sources: Sources, tmp_path):
    # The tied LM head is absent from every one of these files: the config ties it.
    loaded = load_model(str(make(tmp_path, sources)))
    assert_same_weights(loaded, models.create_model("fake-llama"))
