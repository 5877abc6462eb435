"""GgufSource: Hugging Face names and float32 tensors read one at a time from a GGUF,
bit-identical to transformers' own GGUF loading.

Tiny GGUFs are written here with the gguf package (llama with grouped-query attention and
Q4_0/Q4_1/Q8_0/Q4_K/Q6_K/F16/F32 tensors, qwen2 with biases and tied embeddings) and
compared with `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`. The Q/K
un-permutation is also checked against an independent computation: attention scores with
llama.cpp's interleaved rotary embedding on the stored weights equal those with HF's
rotate-half rotary embedding on the weights the source returns (arXiv:2104.09864).
The real default model (SmolLM2-135M) is compared tensor by tensor in the slow tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import ModelError
from models.lazy.gguf_header import read_gguf_header
from models.lazy.gguf_source import GgufSource, gguf_config

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB, BLOCKS = 256, 4, 2, 512, 64, 2
HEAD_DIM = HIDDEN // HEADS


def _llamacpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter (convert_hf_to_gguf, LlamaModel.permute), written from its
    definition: each head's rows go from two rotary halves to interleaved pairs."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _k_quant_bytes(rng, rows: int, cols: int, qtype) -> np.ndarray:
    """Random K-quant blocks with sane fp16 scales (gguf cannot quantize K types)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    if qtype == Q.Q4_K:  # d, dmin (fp16) lead the block
        data[..., 0:2], data[..., 2:4] = scale, scale
    else:  # Q6_K: d (fp16) ends the block
        data[..., -2:] = scale
    return data.reshape(rows, cols // block * size)


def _add(writer, name: str, values: np.ndarray, qtype) -> None:
    if qtype == Q.F32:
        writer.add_tensor(name, values.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, values.astype(np.float16))
    else:
        packed = gguf.quants.quantize(values.astype(np.float32), qtype)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)


def write_tiny_gguf(path: Path, arch: str = "llama", *, tied: bool = False,
                    extra: dict | None = None, kv_heads: int | None = KV_HEADS,
                    head_count: int | None = HEADS) -> dict[str, np.ndarray]:
    """A 2-block decoder GGUF; returns the HF-layout float32 weights it was made from
    (before quantization), keyed by GGUF name, for the permutation check."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(BLOCKS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    if head_count is not None:
        writer.add_head_count(head_count)
    if kv_heads is not None:
        writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    if arch == "llama":
        writer.add_rope_dimension_count(HEAD_DIM)
    source: dict[str, np.ndarray] = {}

    def weight(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.05

    _add(writer, "token_embd.weight", weight(VOCAB, HIDDEN), Q.Q8_0)
    for b in range(BLOCKS):
        pre = f"blk.{b}."
        _add(writer, pre + "attn_norm.weight", 1 + weight(HIDDEN), Q.F32)
        for name, rows, heads, qtype in (("attn_q", HIDDEN, HEADS, Q.Q4_0),
                                         ("attn_k", KV_HEADS * HEAD_DIM, KV_HEADS, Q.F32)):
            hf = weight(rows, HIDDEN)
            source[pre + name + ".weight"] = hf
            stored = _llamacpp_permute(hf, heads) if arch == "llama" else hf
            _add(writer, pre + name + ".weight", stored, qtype)
        _add(writer, pre + "attn_v.weight", weight(KV_HEADS * HEAD_DIM, HIDDEN), Q.F16)
        if arch == "qwen2":
            for name, rows in (("attn_q", HIDDEN), ("attn_k", KV_HEADS * HEAD_DIM),
                               ("attn_v", KV_HEADS * HEAD_DIM)):
                _add(writer, pre + name + ".bias", weight(rows), Q.F32)
        _add(writer, pre + "attn_output.weight", weight(HIDDEN, HIDDEN), Q.Q4_1)
        _add(writer, pre + "ffn_norm.weight", 1 + weight(HIDDEN), Q.F32)
        _add(writer, pre + "ffn_gate.weight", weight(FFN, HIDDEN), Q.Q8_0)
        up = _k_quant_bytes(rng, FFN, HIDDEN, Q.Q6_K)
        writer.add_tensor(pre + "ffn_up.weight", up, raw_shape=up.shape, raw_dtype=Q.Q6_K)
        down = _k_quant_bytes(rng, HIDDEN, FFN, Q.Q4_K)
        writer.add_tensor(pre + "ffn_down.weight", down, raw_shape=down.shape,
                          raw_dtype=Q.Q4_K)
    _add(writer, "output_norm.weight", 1 + weight(HIDDEN), Q.F32)
    if not tied:
        _add(writer, "output.weight", weight(VOCAB, HIDDEN), Q.F16)
    for name, (values, qtype) in (extra or {}).items():
        _add(writer, name, values, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return source


def _transformers_state(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    return model.state_dict()


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True)])
def test_tensors_equal_transformers_gguf_loading(tmp_path, arch, tied):
    path = tmp_path / f"tiny-{arch}.gguf"
    write_tiny_gguf(path, arch, tied=tied)
    expected = _transformers_state(path)
    if tied:  # transformers ties lm_head to the embedding; the file holds it once
        assert torch.equal(expected.pop("lm_head.weight"), expected["model.embed_tokens.weight"])
    with GgufSource(path) as source:
        infos = source.infos()
        assert set(infos) == set(expected)
        assert ("lm_head.weight" in infos) is not tied and source.tied is tied
        for name, info in infos.items():
            tensor = source.read(name)
            assert tensor.dtype == torch.float32 and info.dtype == torch.float32
            assert tuple(tensor.shape) == info.shape == tuple(expected[name].shape), name
            assert info.nbytes == tensor.numel() * 4 and info.file == path.name
            assert torch.equal(tensor, expected[name]), name
        name = "model.layers.1.self_attn.q_proj.weight"
        assert source.raw(name) == source.read(name).numpy().astype("<f4").tobytes()
        assert source.gguf_name(name) == "blk.1.attn_q.weight"


def test_small_row_groups_give_the_same_tensors(tmp_path, monkeypatch):
    """`read` dequantizes a few rows at a time; groups of 3 rows give what transformers'
    whole-tensor dequantization gives."""
    import models.lazy.gguf_source as module

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    expected = _transformers_state(path)
    monkeypatch.setattr(module, "_CHUNK", 3 * 4 * HIDDEN)
    with GgufSource(path) as source:
        for name in source.infos():
            assert torch.equal(source.read(name), expected[name]), name


def test_raw_chunks_and_rows_agree_with_read(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    with GgufSource(path) as source:
        for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                     "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
            whole = source.raw(name)
            for chunk in (7, 4 * HIDDEN, 5 * 4 * FFN + 3, 1 << 24):
                pieces = list(source.raw_chunks(name, chunk_bytes=chunk))
                assert all(len(piece) <= chunk for piece in pieces)
                assert b"".join(pieces) == whole, (name, chunk)
        ids = torch.tensor([[5, 0, 63], [5, 5, 1]])
        for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight"):
            table = source.read(name)
            picked = source.rows(name, ids)
            assert picked.shape == (2, 3, HIDDEN) and torch.equal(picked, table[ids])
        assert source.rows("lm_head.weight", torch.tensor([], dtype=torch.long)).shape == (
            0, HIDDEN)
        with pytest.raises(ModelError, match="row 64 asked"):
            source.rows("model.embed_tokens.weight", torch.tensor([1, 64]))
        with pytest.raises(ValueError, match="2-D"):
            source.rows("model.norm.weight", torch.tensor([0]))


def test_config_matches_transformers_and_reads_no_tensor(tmp_path, monkeypatch):
    from transformers import AutoConfig

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tied=True)

    def refuse(*_args, **_kwargs):
        raise AssertionError("the config must not dequantize tensors")

    monkeypatch.setattr(gguf, "dequantize", refuse)
    monkeypatch.setattr(gguf.quants, "dequantize", refuse)
    config = gguf_config(path)
    reference = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    assert config.to_dict() == reference.to_dict()
    assert config.model_type == "llama" and config.tie_word_embeddings
    assert (config.num_attention_heads, config.num_key_value_heads) == (HEADS, KV_HEADS)


def _rope(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotary embedding of (positions, heads, head_dim): pairs (2i, 2i+1) as llama.cpp
    (the original Meta layout) or halves (i, i + d/2) as HF's rotate_half."""
    positions, _, dim = x.shape
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = torch.arange(positions, dtype=torch.float64)[:, None] * freq  # (P, d/2)
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else x.chunk(2, dim=-1)
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return torch.stack((ra, rb), dim=-1).flatten(-2) if interleaved else torch.cat((ra, rb), -1)


def _scores(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, interleaved: bool):
    """Pre-softmax attention scores (heads, positions, positions) with grouped K heads."""
    q = _rope((x @ wq.double().T).view(len(x), HEADS, HEAD_DIM), interleaved)
    k = _rope((x @ wk.double().T).view(len(x), KV_HEADS, HEAD_DIM), interleaved)
    k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
    return torch.einsum("phd,qhd->hpq", q, k)


def test_unpermuted_qk_give_llamacpp_attention_scores(tmp_path):
    """The independent check of the Q/K un-permutation: q.k scores after rotary embedding
    are the same whether computed llama.cpp's way on the stored rows or HF's way on the
    rows the source returns (and differ if HF's way were used on the stored rows)."""
    path = tmp_path / "tiny.gguf"
    made = write_tiny_gguf(path)
    stored = {}
    for tensor in gguf.GGUFReader(path).tensors:
        if tensor.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
            stored[tensor.name.split(".")[2][-1]] = torch.from_numpy(
                gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
    x = torch.randn(5, HIDDEN, dtype=torch.float64)
    with GgufSource(path) as source:
        wq, wk = (source.read(f"model.layers.0.self_attn.{n}_proj.weight") for n in "qk")
    assert torch.equal(wk, torch.from_numpy(made["blk.0.attn_k.weight"]))  # F32: exact
    llamacpp = _scores(x, stored["q"], stored["k"], interleaved=True)
    assert torch.allclose(_scores(x, wq, wk, interleaved=False), llamacpp, rtol=0, atol=1e-12)
    assert not torch.allclose(_scores(x, stored["q"], stored["k"], interleaved=False),
                              llamacpp, atol=1e-3)


def test_reading_leaves_nothing_mapped_and_copies(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    source = GgufSource(path)
    first = source.read("model.norm.weight")
    first.add_(1.0)  # the caller owns it: a second read is unaffected
    assert not torch.equal(first, source.read("model.norm.weight"))
    source.close()
    with pytest.raises(ModelError, match="closed"):
        source.read("model.norm.weight")


# --- refusals, one line each ---------------------------------------------------------------


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_wrong_magic_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGML" + bytes(64))
    with pytest.raises(ModelError) as exc:
        GgufSource(path)
    assert "not a GGUF file" in _one_line(exc)


@pytest.mark.parametrize("keep", [0.5, 0.02, 0.999])
def test_truncated_file_is_refused(tmp_path, keep):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ModelError) as exc:
        GgufSource(path)
    assert "truncated" in _one_line(exc) or "past the end" in _one_line(exc)


def test_unsupported_architecture_is_refused(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "qwen3")
    with pytest.raises(ModelError) as exc:
        GgufSource(path)
    assert "'qwen3'" in _one_line(exc)
    with pytest.raises(ModelError) as exc:
        gguf_config(path)
    assert "'qwen3'" in _one_line(exc)


@pytest.mark.parametrize("extra", [
    {"blk.0.ffn_gate_exps.weight": (np.zeros((4, 64, 256), np.float32), Q.F32)},
    {"blk.0.attn_q.bias": (np.zeros(HIDDEN, np.float32), Q.F32)},  # llama has none in HF
])
def test_tensors_transformers_would_drop_are_refused(tmp_path, extra):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, extra=extra)
    with pytest.raises(ModelError) as exc:
        GgufSource(path)
    assert next(iter(extra)) in _one_line(exc)


def test_rope_freqs_is_dropped_like_transformers(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, extra={"rope_freqs.weight": (np.ones(HEAD_DIM // 2), Q.F32)})
    assert "rope_freqs.weight" not in GgufSource(path).infos()
    assert set(GgufSource(path).infos()) == set(_transformers_state(path))


def test_missing_head_counts_are_refused(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, kv_heads=None)
    with pytest.raises(ModelError) as exc:
        GgufSource(path)
    assert "llama.attention.head_count_kv" in _one_line(exc)


def test_unknown_name_and_changed_file_are_refused(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    source = GgufSource(path)
    with pytest.raises(ModelError, match="no tensor 'blk.0.attn_q.weight'"):
        source.read("blk.0.attn_q.weight")
    os.utime(path, ns=(1, 1))
    with pytest.raises(ModelError, match="changed on disk"):
        source.read("model.norm.weight")


def test_header_skips_arrays_but_keeps_scalars(tmp_path):
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"t{i}" for i in range(1000)])
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_uint32("test.value", 7)
    writer.add_tensor("output_norm.weight", np.ones(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_gguf_header(path)
    assert header.metadata["test.value"] == 7
    assert header.metadata["tokenizer.ggml.tokens"].count == 1000
    assert header.metadata["test.nested"].count == 2
    reference = gguf.GGUFReader(path)
    tensor = reference.tensors[0]
    assert header.tensors["output_norm.weight"] == (
        int(tensor.tensor_type), (32,), int(tensor.data_offset) - header.data_start)


# --- the real default model ----------------------------------------------------------------


def _smollm2_gguf() -> Path:
    from models.smollm2 import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except ModelError as exc:
        pytest.skip(str(exc))


def test_peak_memory_of_one_block_is_far_below_the_file(tmp_path):
    """In a fresh process: opening the 98 MB SmolLM2 GGUF and reading block 3's tensors
    (14 MB as float32) raises the peak resident size by far less than the file size."""
    path = _smollm2_gguf()
    script = textwrap.dedent(f"""
        import json, resource, sys
        import torch
        from models.lazy.gguf_source import GgufSource
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        source = GgufSource({str(path)!r})
        held = [source.read(n) for n in source.infos() if n.startswith("model.layers.3.")]
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grew": (after - before) * 1024,
                          "held": sum(t.numel() * 4 for t in held)}}))
    """)
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                            text=True, timeout=120, check=True)
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    assert 10e6 < numbers["held"] < 20e6
    assert numbers["grew"] < size / 3, (numbers, size)


@pytest.mark.slow
def test_every_smollm2_tensor_equals_the_cached_transformers_load():
    """The fp32 cache of `models.load_model("smollm2-135m")` is transformers' GGUF load
    saved as safetensors; every tensor of the source equals it bit for bit."""
    from safetensors.torch import load_file

    from models.smollm2 import smollm2_cache_dir

    path = _smollm2_gguf()
    cached = smollm2_cache_dir() / "model.safetensors"
    if not cached.is_file():
        from models import load_model

        load_model("smollm2-135m")
    expected = load_file(cached)
    with GgufSource(path) as source:
        assert set(source.infos()) == set(expected) and source.tied
        for name in source.infos():
            assert torch.equal(source.read(name), expected[name]), name


@pytest.mark.slow
def test_smollm2_config_is_read_without_dequantizing():
    path = _smollm2_gguf()
    started = time.perf_counter()
    config = gguf_config(path)
    seconds = time.perf_counter() - started
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert config.tie_word_embeddings
    assert seconds < 15  # metadata only (2-3 s here); a full dequantization takes 20-40 s
