"""The chunked LiteRT export's int8 FC inputs (export.litert.blockwise,
export.litert.int8_outliers) on a tiny 4-bit Llama with one massive activation channel
injected: input slices are whole quantization groups; in float compute the sliced,
outlier-split linear is the artifact's product; calibration finds the massive channel;
and the written chunks compute what an independent NumPy model of XNNPACK's per-row int8
inputs (per slice, outlier channels in float) over the Hugging Face model computes, much
closer to float compute than the same file without the split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.litert.blockwise import BlockwiseLinear, map_blockwise, slice_bounds
from export.litert.int8_outliers import choose_outliers
from tests.export.test_coreml_chunks import _tiny_llama

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

CONTEXT = 32
SLICE = 32  # one int8 scale per 32 inputs: 2 slices of the 64-wide inputs, 4 of down_proj
MASSIVE = 5  # channel of layer 1's MLP input made ~300x larger than the rest
CALIBRATION = [[(7 * i + 3) % 259 for i in range(24)], [(11 * i + 1) % 259 for i in range(24)]]
SEQUENCE = [5, 9, 30, 100, 7, 3, 44, 61, 12, 200, 17, 3, 99, 42]


def test_slices_are_whole_groups_as_even_as_the_groups_allow() -> None:
    # SmolLM2's 576 inputs in groups of 64: 9 groups into 4 slices
    assert slice_bounds(576, 64, 128) == [(0, 128), (128, 256), (256, 448), (448, 576)]
    assert slice_bounds(1536, 64, 128) == [(i, i + 128) for i in range(0, 1536, 128)]
    assert slice_bounds(64, 32, 128) == [(0, 64)] == slice_bounds(64, 32, 0)
    bounds = slice_bounds(8032, 32, 128)  # afm-3b's MLP width: 251 groups of 32
    assert bounds[0][0] == 0 and bounds[-1][1] == 8032
    assert all(a % 32 == 0 and b > a for a, b in bounds)
    assert all(x[1] == y[0] for x, y in zip(bounds, bounds[1:], strict=False))
    assert {b - a for a, b in bounds} <= {96, 128, 160}


def test_sliced_split_linear_in_float_is_the_artifacts_product() -> None:
    """sum over slices + outlier columns + zero-point correction = x W^T with the
    artifact's weight, its scales rounded to bf16 (independent of the mapping code)."""
    from compress.quant.rtn import rtn_quantize

    torch.manual_seed(0)
    packed = rtn_quantize(torch.randn(24, 128), 4, 32, symmetric=False)
    x = torch.randn(3, 128)
    x[:, 17] *= 300.0
    linear = BlockwiseLinear(map_blockwise(packed), None, [17, 90], slice_width=32)
    assert linear.bounds == [(0, 32), (32, 64), (64, 96), (96, 128)]
    half = 8
    s = packed.scales.float()
    s_bf16 = s.to(torch.bfloat16).float()
    codes = packed.codes.float().unflatten(1, (4, 32))
    zeros = packed.zero_points().float()
    weight = (s_bf16[..., None] * (codes - half) + (s * (half - zeros))[..., None]).flatten(1)
    torch.testing.assert_close(linear(x), x @ weight.t(), rtol=1e-5, atol=1e-4)
    assert linear.outlier_channels == [17, 90]


def test_choose_outliers_takes_channels_far_above_the_median_only() -> None:
    peaks = torch.ones(64)
    peaks[[3, 40]] = torch.tensor([500.0, 5.0])
    assert choose_outliers(peaks, 8, 4.0) == [3, 40]
    assert choose_outliers(peaks, 1, 4.0) == [3]
    assert choose_outliers(torch.ones(64), 8, 4.0) == []
    assert choose_outliers(peaks, 0, 4.0) == []


def _massive_model():
    """Layer 1's MLP input channel MASSIVE made 300x larger, its gate/up weight columns
    zero (their codes at the zero point), as massive activations act in real models: a
    large input the weights nearly ignore (arXiv 2402.17762). In float compute it changes
    nothing; in a per-row int8 input it sets the step of every other channel."""
    model, packed = _tiny_llama(4, tied=True)
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight[MASSIVE] = 300.0
        for short in ("gate_proj", "up_proj"):
            name = f"model.layers.1.mlp.{short}"
            p = packed[name]
            p.codes[:, MASSIVE] = p.zero_points()[:, MASSIVE // p.group_size]
            model.get_submodule(name).weight.copy_(p.dequantize())
    return model, packed


def _export(folder, outlier_channels: int):
    from export.litert.chunked import export_chunked_litert
    from export.llm.decoder_weights import ModuleDecoderWeights

    model, packed = _massive_model()
    weights = ModuleDecoderWeights(model, CONTEXT, packed)
    return export_chunked_litert(weights, folder / "m.tflite", chunks=2, prefill_tokens=16,
                                 calibration=CALIBRATION, outlier_channels=outlier_channels,
                                 slice_width=SLICE)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return {k: _export(tmp_path_factory.mktemp(f"int8-{k}"), k) for k in (8, 0)}


def _runtime_logits(result) -> np.ndarray:
    from export.litert.run_chunks import chained_steps
    from export.llm.greedy import prefill

    prefill_step, _, length, cache_shape = chained_steps(result.files)
    logits, _, _ = prefill(prefill_step, SEQUENCE, cache_shape, CONTEXT, length)
    return logits


def _qd8(x: np.ndarray) -> np.ndarray:
    """XNNPACK's dynamic int8 per row, written again in NumPy: the range widened to hold
    0, 255 steps, zero point rounded from the minimum."""
    low = np.minimum(x.min(-1, keepdims=True), 0.0)
    high = np.maximum(x.max(-1, keepdims=True), 0.0)
    scale = (high - low) / 255.0
    scale = np.where(scale == 0, 1.0, scale)
    zero = np.clip(np.round(-128.0 - low / scale), -128, 127)
    return (np.clip(np.round(x / scale) + zero, -128, 127) - zero) * scale


def _independent_logits(outliers: dict[str, list[int]], int8: bool) -> np.ndarray:
    """The Hugging Face model with each 4-bit linear replaced by a NumPy product: int4
    codes with bf16 scales per 32-input slice (per-row int8 inputs when `int8`), the
    outlier channels in float, the zero-point term in float."""
    model, packed = _massive_model()
    for name, p in packed.items():
        linear = model.get_submodule(name)
        s = p.scales.float().numpy().astype(np.float64)
        s_bf16 = p.scales.float().to(torch.bfloat16).float().numpy().astype(np.float64)
        codes = p.codes.numpy().astype(np.float64) - 8
        zeros = p.zero_points().numpy().astype(np.float64)
        main = np.repeat(s_bf16, 32, axis=1) * codes
        correction = s * (8 - zeros)
        channels = outliers.get(name, [])

        def product(x, main=main, correction=correction, channels=channels):
            rest = x.copy()
            rest[:, channels] = 0.0
            y = np.zeros((x.shape[0], main.shape[0]))
            for a in range(0, x.shape[1], SLICE):
                piece = rest[:, a:a + SLICE]
                y += (_qd8(piece) if int8 else piece) @ main[:, a:a + SLICE].T
            y += x[:, channels] @ main[:, channels].T
            return y + x.reshape(x.shape[0], -1, 32).sum(-1) @ correction.T

        def forward(x, product=product):
            flat = x.detach().double().reshape(-1, x.shape[-1]).numpy()
            return torch.from_numpy(product(flat)).float().reshape(*x.shape[:-1], -1)
        linear.forward = forward
    with torch.no_grad():
        return model(torch.tensor([SEQUENCE])).logits[0].numpy()


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_calibration_finds_the_massive_channel(files) -> None:
    outliers = {n: v for c in files[8].chunks for n, v in c.outliers.items()}
    for short in ("gate_proj", "up_proj"):
        assert MASSIVE in outliers[f"model.layers.1.mlp.{short}"]
    # random weights elsewhere: at most a few channels pass the 4x-median test
    assert all(len(v) <= 8 for v in outliers.values())
    details = files[8].extra_details["int8_input_outliers"]
    assert details["channels"] == sum(len(v) for v in outliers.values())
    assert details["float_bytes"] > 0
    assert not any(c.outliers for c in files[0].chunks)  # layers with any split


def test_chunks_compute_the_independent_int8_model_and_the_split_pays(files) -> None:
    outliers = {n: v for c in files[8].chunks for n, v in c.outliers.items()}
    exact = _independent_logits(outliers, int8=False)  # float compute, the file's weights
    split, plain = _runtime_logits(files[8]), _runtime_logits(files[0])
    # the runtime is the independent per-slice int8 model, with and without the split
    assert _relative(split, _independent_logits(outliers, int8=True)) < 1e-3
    assert _relative(plain, _independent_logits({}, int8=True)) < 1e-3
    # the massive channel ruins its rows' int8 scale unless it leaves the int8 FC
    assert _relative(split, exact) < 0.2 * _relative(plain, exact)
    assert _relative(split, exact) < 0.03


@pytest.mark.parametrize(("target", "flags", "says"), [
    ("onnx", ["--outlier-channels", "4"], "--outlier-channels is for the chunked tflite"),
    ("tflite", ["--int8-slice", "64"], "--int8-slice is for the chunked tflite export "
                                       "(--chunks or --engine streaming)"),
    ("tflite", ["--outlier-channels", "-1", "--chunks", "2"], "must be >= 0"),
])
def test_int8_input_flags_are_refused_where_nothing_takes_int8_inputs(
        toolkit_cli, tmp_path, target, flags, says) -> None:
    out = tmp_path / f"m.{target}"
    result = toolkit_cli("export", target, "--model", "fake-llama", "--out", out, *flags,
                         "--no-verify", "--quiet")
    assert result.code == 2
    assert len(result.err_lines) == 1 and says in result.err
    assert list(tmp_path.iterdir()) == []
