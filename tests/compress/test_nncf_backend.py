"""`backend="nncf"`: NNCF's compress_weights on the fake Llama, read back into the toolkit's
packed form. NNCF's PyTorch weight-compression path builds no C++ extension, so a data-free
run takes about a second here; AWQ + scale estimation a few."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch

import compress
from compress.errors import CompressError
from compress.quant import IntQuantConfig, RTNConfig
from compress.quant.nncf_backend import (
    check_exact,
    decompressor_to_affine,
    nncf_options,
    quantize_with_nncf,
)
from models import create_model, decoder_layout


@dataclasses.dataclass
class _AWQLike(IntQuantConfig):
    """Stands for the toolkit's AWQ config: the NNCF backend reads only its name and grid.
    Not registered (that would take the name "awq"), so it runs through
    `quantize_with_nncf`, the function the registered handler calls for backend="nncf"."""

    method: ClassVar[str] = "awq"


@dataclasses.dataclass
class _GPTQLike(IntQuantConfig):
    method: ClassVar[str] = "gptq"


def _calib(rows=4, length=24):
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, 259, (rows, length), generator=generator)


def _block_linears(model):
    layout = decoder_layout(model)
    return {name: lin for i in range(len(layout.blocks))
            for name, lin in layout.block_linears(i).items()}


def _quantize(config, calib=None):
    pytest.importorskip("nncf")
    model = create_model("fake-llama").module
    calib = _calib() if calib is None else calib
    if type(config) in (_AWQLike, _GPTQLike):
        return model, quantize_with_nncf(model, config, calib)
    return model, compress.apply(model, config, calib)


def _check_plain_model(model, report, expected_layers):
    """The packed form is what the model computes with, and the model is a plain HF one."""
    fresh = create_model("fake-llama").module
    assert list(model.state_dict()) == list(fresh.state_dict())
    assert "forward" not in model.__dict__ and "__nncf_hooks" not in model._modules
    linears = _block_linears(model)
    assert sorted(report.quantized) == sorted(expected_layers)
    for name, packed in report.quantized.items():
        assert torch.equal(packed.dequantize(), linears[name].weight.data), name
        assert packed.codes.dtype == torch.uint8 and packed.scales.dtype == torch.float16
        assert int(packed.codes.max()) < 1 << packed.bits
        assert linears[name].weight.dtype == torch.float32
    # Embeddings and the (tied) head stay float and untouched.
    assert torch.equal(model.get_input_embeddings().weight, fresh.get_input_embeddings().weight)
    with torch.no_grad():
        logits = model(input_ids=_calib(), use_cache=False).logits
    assert torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def rtn_asym():
    return _quantize(RTNConfig(bits=4, group_size=32, backend="nncf"))


def test_rtn_int4_asym_returns_plain_model(rtn_asym, tmp_path):
    model, report = rtn_asym
    assert report.backend == "nncf" and report.method == "rtn" and report.ignored == []
    assert report.calib_tokens == 0 and set(report.seconds) == {"nncf", "convert"}
    assert len(report.quantized) == 14
    assert {(q.bits, q.group_size, q.zeros is None) for q in report.quantized.values()} == {
        (4, 32, False)}
    _check_plain_model(model, report, _block_linears(model))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()


def test_rtn_int4_asym_matches_toolkit_rtn(rtn_asym):
    _, report = rtn_asym
    toolkit = compress.apply(create_model("fake-llama").module, RTNConfig(bits=4, group_size=32),
                             _calib())
    codes_apart = zeros_apart = 0
    for name, ours in toolkit.quantized.items():
        theirs = report.quantized[name]
        # Same grid (the group's range widened to include 0, 15 steps): identical fp16 scales.
        assert torch.equal(theirs.scales, ours.scales), name
        # NNCF rounds zero points and codes with the fp32 scale, the toolkit with the stored
        # fp16 one: values sitting on a rounding boundary land one step apart.
        zero_step = (theirs.zeros.int() - ours.zeros.int()).abs()
        step = (theirs.dequantize() - ours.dequantize()).abs() / ours.scales.float().abs().max()
        assert int(zero_step.max()) <= 1 and float(step.max()) <= 1.001, name
        zeros_apart += int(zero_step.sum())
        codes_apart += int((theirs.codes != ours.codes).sum())
    weights = sum(q.codes.numel() for q in toolkit.quantized.values())
    groups = sum(q.scales.numel() for q in toolkit.quantized.values())
    assert codes_apart / weights < 0.01 and zeros_apart / groups < 0.05


def test_int4_sym_per_channel_and_int8():
    model, report = _quantize(RTNConfig(bits=4, group_size=None, symmetric=True, backend="nncf"))
    _check_plain_model(model, report, _block_linears(model))
    for packed in report.quantized.values():
        assert packed.zeros is None and packed.group_size == packed.shape[1]

    model, report = _quantize(RTNConfig(bits=8, group_size=None, backend="nncf"))
    _check_plain_model(model, report, _block_linears(model))
    assert {packed.bits for packed in report.quantized.values()} == {8}


def test_ignore_keeps_layers_float():
    model, report = _quantize(RTNConfig(bits=4, group_size=32, ignore=("mlp.down_proj",),
                                        backend="nncf"))
    fresh = _block_linears(create_model("fake-llama").module)
    assert sorted(report.ignored) == sorted(n for n in fresh if "down_proj" in n)
    _check_plain_model(model, report, [n for n in fresh if "down_proj" not in n])
    for name in report.ignored:
        assert torch.equal(_block_linears(model)[name].weight, fresh[name].weight)


def test_awq_with_scale_estimation_runs():
    calib = _calib(rows=2, length=16)
    model, report = _quantize(_AWQLike(bits=4, group_size=32, backend="nncf"), calib)
    assert report.method == "awq" and report.calib_tokens == calib.numel()
    _check_plain_model(model, report, _block_linears(model))


@pytest.mark.parametrize("config, message", [
    (RTNConfig(bits=3, backend="nncf"), "NNCF supports 4 and 8 bits"),
    (RTNConfig(bits=2, backend="nncf"), "NNCF supports 4 and 8 bits"),
    (RTNConfig(bits=8, group_size=128, backend="nncf"), "per output channel only"),
    (_AWQLike(bits=8, group_size=None, backend="nncf"), "at 4 bits only"),
    (_GPTQLike(bits=4, backend="nncf"), "has no GPTQ"),
])
def test_unsupported_requests_name_the_fix(config, message):
    with pytest.raises(CompressError, match=message):
        nncf_options(config)
    model = create_model("fake-llama").module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CompressError, match=message):  # before anything touches the model
        if isinstance(config, RTNConfig):
            compress.apply(model, config, _calib())
        else:
            quantize_with_nncf(model, config, _calib())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_group_size_must_divide_inputs():
    pytest.importorskip("nncf")
    with pytest.raises(CompressError, match="does not divide the 64 inputs"):
        compress.apply(create_model("fake-llama").module,
                       RTNConfig(bits=4, group_size=48, backend="nncf"), _calib())


@pytest.mark.parametrize("kind", ["int4_asym", "int4_sym", "int8_asym", "int8_sym"])
def test_decompressor_conversion_is_exact(kind):
    """Each NNCF decompressor, built from known integers, converts to the same weight."""
    layers = pytest.importorskip("nncf.torch.quantization.layers")
    generator = torch.Generator().manual_seed(1)
    out, inp = 6, 16
    bits = 4 if kind.startswith("int4") else 8
    signed = kind.endswith("_sym")
    low, high = (-(1 << bits - 1), 1 << bits - 1) if signed else (0, 1 << bits)
    groups = 2 if bits == 4 else 1  # NNCF's INT8 modes are per channel
    q = torch.randint(low, high, (out, groups, inp // groups), generator=generator)
    # Signed scales: NNCF's symmetric grid maps a group's larger-magnitude end to -2^(b-1).
    scale = (torch.rand(out, groups, 1, generator=generator) - 0.3).to(torch.float16)
    zero = torch.randint(0, 1 << bits, (out, groups, 1), generator=generator).to(torch.uint8)
    if bits == 8:
        q, scale, zero = q.reshape(out, inp), scale.reshape(out, 1), zero.reshape(out, 1)
    hook = {
        "int4_asym": lambda: layers.INT4AsymmetricWeightsDecompressor(
            scale, zero, q.shape, (out, inp), torch.float32),
        "int4_sym": lambda: layers.INT4SymmetricWeightsDecompressor(
            scale, q.shape, (out, inp), torch.float32),
        "int8_asym": lambda: layers.INT8AsymmetricWeightsDecompressor(scale, zero, torch.float32),
        "int8_sym": lambda: layers.INT8SymmetricWeightsDecompressor(scale, torch.float32),
    }[kind]()
    packed = hook.pack_weight(q.to(torch.int8 if signed else torch.uint8))
    nncf_weight = hook(packed)
    affine = decompressor_to_affine(hook, packed, (out, inp))
    assert affine.bits == bits and affine.group_size == inp // groups
    assert (affine.zeros is None) == signed
    dequantized = check_exact(kind, affine, nncf_weight, bits)
    # fp32 product vs NNCF's fp16 product: at most half an fp16 ulp apart.
    assert torch.allclose(dequantized, nncf_weight, rtol=2.0 ** -11, atol=0)
    with pytest.raises(CompressError, match="does not reproduce"):
        check_exact(kind, affine, nncf_weight + 1e-3, bits)
