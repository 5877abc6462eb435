"""The int8 key/value cache of the fused ONNX decoder (`--kv-cache int8`): scales measured
per cache channel (export.llm.kv_scales) against keys and values computed here from the
model's own layers; the file's cache codes against round(k / s) of the float file's
cache; logits near the float file's; the refusals (standard attention, streaming engine,
bundles, no calibration)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from export.errors import ExportError
from export.llm.decoder_weights import ModuleDecoderWeights
from export.llm.greedy import prefill
from export.llm.kv_scales import INT8_MAX, measure_kv_scales
from export.onnx.decoder_graph import cache_layout, write_decoder_onnx
from export.onnx.llm_session import OnnxDecoderSession
from export.options import ExportOptions
from models import create_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONTEXT = 48


def _windows(vocab: int, count: int = 3, length: int = 40) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (length,), generator=generator) for _ in range(count)]


@pytest.fixture(scope="module")
def model():
    return create_model("fake-llama").module.eval()


@pytest.fixture(scope="module")
def files(model, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("kv-int8")
    windows = _windows(model.config.vocab_size)
    int8 = ModuleDecoderWeights(model, CONTEXT)
    int8.kv_scales = measure_kv_scales(model, windows)
    write_decoder_onnx(int8, folder / "int8.onnx", external=False, attention="fused",
                       kv_cache_dtype="int8")
    write_decoder_onnx(ModuleDecoderWeights(model, CONTEXT), folder / "float.onnx",
                       external=False, attention="fused")
    return {"int8": folder / "int8.onnx", "float": folder / "float.onnx",
            "scales": int8.kv_scales, "windows": windows}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


@torch.no_grad()
def _layer0_keys_values(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's rotated keys and values [kv_heads, T, D], from its own modules: RMSNorm of
    the embeddings, k/v projections, rotary from the config's theta (rotate-half form)."""
    config, layer = model.config, model.model.layers[0]
    h = model.model.embed_tokens(ids[None])
    var = h.pow(2).mean(-1, keepdim=True)
    h = layer.input_layernorm.weight * (h * torch.rsqrt(var + config.rms_norm_eps))
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    dim = getattr(config, "head_dim", None) or dim
    k = layer.self_attn.k_proj(h).view(1, -1, heads, dim).transpose(1, 2)[0]
    v = layer.self_attn.v_proj(h).view(1, -1, heads, dim).transpose(1, 2)[0]
    theta = config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.arange(len(ids), dtype=torch.float32)[:, None] * inv_freq[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return k * cos + _rotate_half(k) * sin, v


def test_scales_are_the_per_channel_absmax_over_127(model, files):
    pairs = [_layer0_keys_values(model, w) for w in files["windows"]]
    keys, values = [k for k, _ in pairs], [v for _, v in pairs]
    k_max = torch.cat(keys, dim=1).abs().amax(dim=1)  # [kv_heads, D]
    v_max = torch.cat(values, dim=1).abs().amax(dim=1)
    scales = files["scales"]
    assert scales.keys.shape == (model.config.num_hidden_layers, *k_max.shape)
    np.testing.assert_allclose(scales.keys[0], k_max.numpy() / INT8_MAX, rtol=1e-5)
    np.testing.assert_allclose(scales.values[0], v_max.numpy() / INT8_MAX, rtol=1e-5)
    assert scales.tokens == sum(len(w) for w in files["windows"])
    assert (scales.keys > 0).all() and (scales.values > 0).all()


def test_the_file_stores_int8_codes_of_the_float_cache(files):
    int8, flt = OnnxDecoderSession.open(files["int8"]), OnnxDecoderSession.open(files["float"])
    assert int8.cache_dtype == np.int8 and int8.contract["cache_dtype"] == "int8"
    prompt = files["windows"][0][:20].tolist()
    logits8, keys8, values8 = prefill(int8, prompt, int8.cache_shape, CONTEXT)
    logits, keys, values = prefill(flt, prompt, flt.cache_shape, CONTEXT)
    assert keys8.dtype == np.int8
    scales = files["scales"]
    for layer in range(keys.shape[0]):
        for cache8, cache, table in ((keys8, keys, scales.keys), (values8, values,
                                                                   scales.values)):
            expected = np.clip(np.round(cache[layer, :, :20] / table[layer][:, None, :]),
                               -128, 127)
            # one code of slack: the float file's own rounding of a value on a half step
            assert np.abs(cache8[layer, :, :20].astype(np.float32) - expected).max() <= 1
            assert not cache8[layer, :, 20:].any()  # rows past the prompt stay zero
    # calibrated on these very windows: nothing clips, and the logits stay near the float's
    error = np.abs(logits8 - logits).max() / np.abs(logits).max()
    assert error < 2e-2


def test_the_graph_carries_per_channel_scales(files, model):
    graph = onnx.load(str(files["int8"])).graph
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(nodes) == model.config.num_hidden_layers
    attributes = {a.name: a for a in nodes[0].attribute}
    assert attributes["k_quant_type"].s == b"PER_CHANNEL"
    assert attributes["kv_cache_bit_width"].i == 8
    scale = {i.name: i for i in graph.initializer}[nodes[0].input[12]]
    assert list(scale.dims) == [1, model.config.num_key_value_heads, 1,
                                files["scales"].keys.shape[-1]]
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert inputs["past_key.0"] == onnx.TensorProto.INT8


def test_an_int8_cache_needs_the_fused_attention():
    with pytest.raises(ExportError, match="--kv-cache int8 needs the fused attention"):
        cache_layout(64, "standard", "int8")


def test_an_int8_cache_needs_scales(model, tmp_path):
    with pytest.raises(ValueError, match="kv_scales"):
        write_decoder_onnx(ModuleDecoderWeights(model, CONTEXT), tmp_path / "m.onnx",
                           external=False, attention="fused", kv_cache_dtype="int8")
    assert not (tmp_path / "m.onnx").exists()


def test_the_exporter_refuses_int8_without_calibration_or_under_streaming(tmp_path):
    from export.llm.streamed import StreamedArtifact
    from export.registry import get_exporter

    exporter = get_exporter("onnx")
    options = ExportOptions(kv_cache_dtype="int8")
    loaded = create_model("fake-llama")
    with pytest.raises(ExportError, match="needs calibration text"):
        exporter.write_llm(loaded, tmp_path / "a.onnx", options)
    streamed = StreamedArtifact(SimpleNamespace(path=tmp_path), str(tmp_path), None)
    with pytest.raises(ExportError, match="--kv-cache float16, or --engine memory"):
        exporter.write_llm(streamed, tmp_path / "b.onnx", options)
    assert not list(Path(tmp_path).glob("*.onnx"))


def test_a_bundle_refuses_an_int8_cache(tmp_path):
    from export.bundle import write_bundle

    loaded = create_model("fake-llama")
    with pytest.raises(ExportError, match="use --kv-cache float16 with --bundle"):
        write_bundle("onnx", loaded, tmp_path / "bundle", ExportOptions(kv_cache_dtype="int8"))
    assert not (tmp_path / "bundle").exists()


def test_an_int8_cache_file_is_verified_like_int8_compute():
    from export.llm.check import LlmVerification
    from export.onnx.accuracy_choice import INT8_COMPUTE_RTOL, verify_choosing_level
    from export.verify import agreement

    def check() -> LlmVerification:
        logits = np.ones((4, 8), dtype=np.float32)
        return LlmVerification("onnxruntime", agreement("logits", logits, logits), [1, 2],
                               [1, 2], 3, 0.0)

    int8 = verify_choosing_level(check, Path("unused.onnx"),
                                 ExportOptions(kv_cache_dtype="int8", accuracy_level=0),
                                 has_nbits=False)
    assert int8.rtol == INT8_COMPUTE_RTOL and int8.allow_near_ties
    assert "int8" in int8.notes["kv_cache"]
    plain = verify_choosing_level(check, Path("unused.onnx"),
                                  ExportOptions(kv_cache_dtype="float16", accuracy_level=0),
                                  has_nbits=False)
    assert plain.rtol is None and not plain.allow_near_ties and "kv_cache" not in plain.notes


def test_toolkit_export_writes_and_verifies_an_int8_cache(toolkit_cli, tmp_path):
    out = tmp_path / "dir ü" / "m.onnx"
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--out", out,
                         "--kv-cache", "int8", "--max-context", "64", "--json",
                         tmp_path / "r.json")
    assert result.code == 0, result.err
    import json

    verification = json.loads((tmp_path / "r.json").read_text())["verification"]
    assert verification["passed"] and "int8" in verification["kv_cache"]
    session = OnnxDecoderSession.open(out)
    assert session.contract["cache_dtype"] == "int8"
    scales = [i for i in onnx.load(str(out)).graph.initializer if i.name.startswith("kv_scale")]
    assert len(scales) == 2 * session.cache_shape[0]


@pytest.mark.parametrize(("flags", "message"), [
    (["--engine", "streaming"], "use --kv-cache float16, or --engine memory"),
    (["--onnx-attention", "standard"], "needs the fused attention"),
])
def test_toolkit_export_refuses_int8_cache_in_one_line(toolkit_cli, fake_model_dir, tmp_path,
                                                       flags, message):
    out = tmp_path / "m.onnx"
    result = toolkit_cli("export", "onnx", "--model", fake_model_dir, "--out", out,
                         "--kv-cache", "int8", "--max-context", "64", *flags)
    assert result.code == 2
    assert len(result.err_lines) == 1 and message in result.err_lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))
