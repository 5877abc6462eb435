"""QuantizedWeight <-> compressed-tensors pack-quantized tensors (models/qformat/
compressed_tensors.py), checked against a plain bit-by-bit packer written here and against
the compressed-tensors package itself (its packer and its decompressor), the code that
transformers runs when it loads our files."""

from __future__ import annotations

import pytest
import torch

from models.qformat import AffineQuantized, PaletteQuantized
from models.qformat.compressed_tensors import (
    affine_from_ct,
    ct_blocker,
    ct_quantization_config,
    ct_tensors,
    pack_rows_int32,
    set_blocker,
    unpack_rows_int32,
)


def reference_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit by bit: code j of a row occupies bits j*b .. j*b+b-1 of the row's int32 words,
    low bit first; words are read as signed int32."""
    rows, cols = codes.shape
    words = [[0] * -(-cols * bits // 32) for _ in range(rows)]
    for r in range(rows):
        for j in range(cols):
            for k in range(bits):
                if (int(codes[r, j]) >> k) & 1:
                    position = j * bits + k
                    words[r][position // 32] |= 1 << (position % 32)
    signed = [[w - (1 << 32) if w >= 1 << 31 else w for w in row] for row in words]
    return torch.tensor(signed, dtype=torch.int32)


def random_affine(out: int, inp: int, bits: int, group: int, symmetric: bool,
                  seed: int = 0) -> AffineQuantized:
    gen = torch.Generator().manual_seed(seed)
    groups = inp // group
    zeros = None if symmetric else torch.randint(0, 1 << bits, (out, groups), generator=gen,
                                                 dtype=torch.uint8)
    return AffineQuantized(
        codes=torch.randint(0, 1 << bits, (out, inp), generator=gen, dtype=torch.uint8),
        scales=(torch.rand(out, groups, generator=gen) * 0.1 + 1e-3).half(),
        zeros=zeros, bits=bits, group_size=group)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("cols", [1, 31, 32, 40, 96])
def test_packing_matches_bit_by_bit_reference_and_inverts(bits, cols):
    codes = torch.randint(0, 1 << bits, (5, cols), generator=torch.Generator().manual_seed(bits),
                          dtype=torch.uint8)
    packed = pack_rows_int32(codes, bits)
    assert torch.equal(packed, reference_pack(codes, bits))
    assert torch.equal(unpack_rows_int32(packed, bits, cols), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packing_matches_compressed_tensors(bits):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    codes = torch.randint(0, 1 << bits, (6, 72), dtype=torch.uint8)
    signed = (codes.to(torch.int32) - (1 << (bits - 1))).to(torch.int8)
    assert torch.equal(pack_rows_int32(codes, bits), helpers.pack_to_int32(signed, bits))
    # Zero points are packed along dim 0.
    assert torch.equal(pack_rows_int32(codes.T, bits).T,
                       helpers.pack_to_int32(signed, bits, packed_dim=0))


@pytest.mark.parametrize("bits,group,symmetric", [
    (4, 32, False), (4, 64, True), (8, 64, True), (8, 16, False), (2, 32, False), (2, 64, True),
])
def test_round_trip_is_exact(bits, group, symmetric):
    q = random_affine(24, 64, bits, group, symmetric)
    back = affine_from_ct("layer", ct_tensors("layer", q), q.meta())
    assert torch.equal(back.codes, q.codes) and torch.equal(back.scales, q.scales)
    assert back.scales.dtype == torch.float16
    assert (back.zeros is None) == symmetric
    if not symmetric:
        assert torch.equal(back.zeros, q.zeros)
    assert (back.bits, back.group_size, back.input_scale) == (bits, group, None)


@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, False), (8, 64, True), (2, 16, True),
                                                  (4, 64, False)])
def test_compressed_tensors_decompresses_to_our_weights(bits, group, symmetric):
    """What transformers computes from our tensors (compressed-tensors' own decompressor
    with the scheme of our config) equals AffineQuantized.dequantize bit for bit."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig

    q = random_affine(16, 64, bits, group, symmetric, seed=3)
    config = QuantizationConfig.model_validate(ct_quantization_config({"layer": q}))
    scheme = next(iter(config.config_groups.values()))
    state = {k.split(".", 1)[1]: v for k, v in ct_tensors("layer", q).items()}
    weight = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
    assert torch.equal(weight.float(), q.dequantize())


def test_config_groups_one_scheme_per_kind_by_exact_names():
    quantized = {"a.q_proj": random_affine(8, 64, 4, 64, False),  # whole row = the g64 others use
                 "a.down_proj": random_affine(8, 128, 4, 64, False),
                 "a.up_proj": random_affine(8, 64, 8, 64, True)}
    config = ct_quantization_config(quantized)
    groups = {tuple(g["targets"]): g["weights"] for g in config["config_groups"].values()}
    assert groups[("a.down_proj", "a.q_proj")]["group_size"] == 64
    assert groups[("a.down_proj", "a.q_proj")]["strategy"] == "group"
    assert groups[("a.up_proj",)]["num_bits"] == 8 and groups[("a.up_proj",)]["symmetric"]
    assert config["format"] == "pack-quantized" and config["dequantize"] is True
    channel = ct_quantization_config({"x": random_affine(8, 64, 8, 64, True),
                                      "y": random_affine(8, 128, 8, 128, True)})
    (only,) = channel["config_groups"].values()
    assert only["weights"]["strategy"] == "channel" and only["targets"] == ["x", "y"]


def test_blockers_name_what_compressed_tensors_cannot_hold():
    palette = PaletteQuantized(indices=torch.zeros(4, 8, dtype=torch.uint8),
                               lut=torch.zeros(1, 16, dtype=torch.float16), bits=4, group_rows=4)
    assert "palettized" in ct_blocker(palette)
    awq = random_affine(8, 64, 4, 32, False)
    awq.input_scale = torch.ones(64, dtype=torch.float16)
    assert "AWQ" in ct_blocker(awq)
    assert "3-bit" in ct_blocker(random_affine(8, 64, 3, 32, False))
    assert ct_blocker(random_affine(8, 64, 4, 32, False)) is None
    mixed = {"a": random_affine(8, 64, 4, 32, False), "b": random_affine(8, 64, 8, 32, False)}
    assert "single scheme" in set_blocker(mixed)
    one_scheme = {"a": random_affine(8, 64, 4, 32, True), "b": random_affine(8, 128, 4, 32, True)}
    assert set_blocker(one_scheme) is None
    with pytest.raises(ValueError, match="AWQ"):
        ct_tensors("layer", awq)


def test_reading_refuses_tensors_that_disagree_with_the_layout():
    q = random_affine(8, 64, 4, 32, False)
    tensors = ct_tensors("layer", q)
    bad_shape = {**tensors, "layer.weight_shape": torch.tensor([8, 32])}
    with pytest.raises(ValueError, match="weight_shape"):
        affine_from_ct("layer", bad_shape, q.meta())
    bad_scale = {**tensors, "layer.weight_scale": tensors["layer.weight_scale"] + 1e-9}
    with pytest.raises(ValueError, match="fp16"):
        affine_from_ct("layer", bad_scale, q.meta())
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_rows_int32(tensors["layer.weight_packed"], 4, 80)
