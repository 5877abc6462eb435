"""Packed formats: pack -> unpack is exact for every width, and the stored forms rebuild
the same weights from their tensors and layout."""

from __future__ import annotations

import json

import pytest
import torch

from models.qformat import (
    AffineQuantized,
    PaletteQuantized,
    bits_per_weight,
    decode_layout,
    encode_layout,
    pack_bits,
    packed_nbytes,
    packed_state_dict,
    quantized_from_state,
    unpack_bits,
)


def _reference_pack(codes: list[int], bits: int) -> bytes:
    """Independent packer: one big little-endian integer, code i at bit i*bits."""
    value = sum(code << (i * bits) for i, code in enumerate(codes))
    return value.to_bytes(packed_nbytes(len(codes), bits), "little")


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 9, 64, 1001])
def test_pack_matches_an_independent_packer_and_unpacks_exactly(bits, count):
    generator = torch.Generator().manual_seed(bits * 1000 + count)
    codes = torch.randint(0, 1 << bits, (count,), generator=generator, dtype=torch.int64)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(count, bits)
    assert bytes(packed.tolist()) == _reference_pack(codes.tolist(), bits)
    assert torch.equal(unpack_bits(packed, bits, count), codes.to(torch.uint8))


def test_two_4bit_codes_share_a_byte_low_nibble_first():
    assert pack_bits(torch.tensor([0x3, 0xA]), 4).tolist() == [0xA3]


@pytest.mark.parametrize("bad, needle", [(16, "[0, 16)"), (-1, "[0, 16)")])
def test_codes_out_of_range_are_refused(bad, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        pack_bits(torch.tensor([1, bad]), 4)


def test_unpack_refuses_a_wrong_byte_count():
    with pytest.raises(ValueError, match="cannot hold exactly"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 8)


def _affine(bits=3, group=4, symmetric=False, input_scale=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out, inp = 6, 8
    return AffineQuantized(
        codes=torch.randint(0, 1 << bits, (out, inp), generator=generator).to(torch.uint8),
        scales=torch.rand(out, inp // group, generator=generator).to(torch.float16),
        zeros=None if symmetric else torch.randint(0, 1 << bits, (out, inp // group),
                                                   generator=generator).to(torch.uint8),
        bits=bits, group_size=group,
        input_scale=(torch.rand(inp, generator=generator) + 0.5).to(torch.float16)
        if input_scale else None)


def _palette(bits=2, group_rows=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return PaletteQuantized(
        indices=torch.randint(0, 1 << bits, (6, 8), generator=generator).to(torch.uint8),
        lut=torch.randn(6 // group_rows, 1 << bits, generator=generator).to(torch.float16),
        bits=bits, group_rows=group_rows)


def test_affine_dequantize_follows_its_formula():
    q = _affine(input_scale=True)
    r, j = 4, 5
    g = j // q.group_size
    expected = float(q.scales[r, g]) * (int(q.codes[r, j]) - int(q.zeros[r, g]))
    assert q.dequantize()[r, j].item() == pytest.approx(expected / float(q.input_scale[j]))


def test_symmetric_zero_point_is_the_middle_code():
    q = _affine(bits=4, symmetric=True)
    codes = torch.full_like(q.codes, 8)
    assert torch.count_nonzero(AffineQuantized(codes, q.scales, None, 4, 4).dequantize()) == 0


def test_palette_dequantize_looks_up_the_rows_table():
    q = _palette()
    assert q.dequantize()[4, 2].item() == q.lut[1, int(q.indices[4, 2])].float().item()


@pytest.mark.parametrize("make", [
    lambda: _affine(bits=2), lambda: _affine(bits=3, symmetric=True),
    lambda: _affine(bits=4, input_scale=True), lambda: _affine(bits=8, group=8),
    lambda: _palette(bits=2), lambda: _palette(bits=6, group_rows=6)],
    ids=["affine2", "affine3-sym", "affine4-awq", "affine8", "palette2", "palette6"])
def test_stored_form_round_trips_bit_for_bit(make):
    q = make()
    state = packed_state_dict({"layer.weight": torch.zeros(6, 8), "layer.bias": torch.ones(6)},
                              {"layer": q})
    assert "layer.weight" not in state and "layer.bias" in state
    layers = decode_layout(encode_layout({"layer": q}))
    back = quantized_from_state(state, layers)["layer"]
    assert torch.equal(back.dequantize(), q.dequantize())
    for field in ("codes", "zeros", "scales", "indices", "lut", "input_scale"):
        if getattr(q, field, None) is not None:
            assert torch.equal(getattr(back, field), getattr(q, field)), field
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if k != "layer.bias")
    assert q.storage_bytes() == stored


def test_bits_per_weight_counts_scales_and_zero_points():
    q = _affine(bits=3, group=4)  # 48 3-bit codes, 12 fp16 scales, 12 3-bit zero points
    stored_bits = 8 * (18 + 12 * 2 + 5)  # ceil(144 / 8) + 24 + ceil(36 / 8) bytes
    assert bits_per_weight({"a": q}) == pytest.approx(stored_bits / 48)


def test_shapes_are_checked():
    q = _affine()
    with pytest.raises(ValueError, match="does not divide"):
        AffineQuantized(q.codes, q.scales, q.zeros, 3, group_size=5)
    with pytest.raises(ValueError, match="lookup tables have shape"):
        PaletteQuantized(torch.zeros(6, 8, dtype=torch.uint8), torch.zeros(2, 3), 2, 3)


@pytest.mark.parametrize("text, needle", [
    ("not json", "not JSON"), (json.dumps({"format": "other"}), "is not edge-quant/1"),
    (json.dumps({"format": "edge-quant/1", "layers": {"a": {"scheme": "fp4"}}}),
     "unknown quantization scheme")])
def test_foreign_layouts_are_refused(text, needle):
    with pytest.raises(ValueError, match=needle):
        decode_layout(text)


def test_missing_packed_tensor_is_named():
    q = _affine()
    layers = decode_layout(encode_layout({"layer": q}))
    with pytest.raises(ValueError, match="layer: packed tensor"):
        quantized_from_state({}, layers)
