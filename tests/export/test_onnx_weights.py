"""Each packed weight as ONNX nodes, run by onnxruntime, against an independent numpy
dequantization of the same codes (not models.qformat's own dequantize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.onnx.weights import compressed_weight
from models.qformat import AffineQuantized, PaletteQuantized

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

OUT, IN = 48, 96  # 96 inputs: per-channel is not a power-of-two block


def _run(weight, x: np.ndarray) -> tuple[np.ndarray, list[str], str]:
    from onnx import TensorProto, helper

    built = compressed_weight(weight, "A", "Y", "layer")
    assert built is not None
    graph = helper.make_graph(
        built.nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [x.shape[0], OUT])],
        built.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"A": x})[0], [n.op_type for n in built.nodes], built.carried_as


def _affine(bits: int, group: int, symmetric: bool, awq: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    groups = IN // group
    codes = torch.randint(0, 1 << bits, (OUT, IN), generator=g, dtype=torch.uint8)
    scales = (torch.rand(OUT, groups, generator=g) * 0.1 + 0.01).half()
    zeros = None if symmetric else torch.randint(0, 1 << bits, (OUT, groups), generator=g,
                                                 dtype=torch.uint8)
    input_scale = (torch.rand(IN, generator=g) + 0.5).half() if awq else None
    return AffineQuantized(codes, scales, zeros, bits, group, input_scale)


def _numpy_affine(w: AffineQuantized) -> np.ndarray:
    codes = w.codes.numpy().astype(np.float64)
    zero = (np.full(w.scales.shape, 2 ** (w.bits - 1)) if w.zeros is None
            else w.zeros.numpy().astype(np.float64))
    dense = np.empty_like(codes)
    for r in range(codes.shape[0]):
        for j in range(codes.shape[1]):
            g = j // w.group_size
            dense[r, j] = float(w.scales[r, g]) * (codes[r, j] - zero[r, g])
    if w.input_scale is not None:
        dense = dense / w.input_scale.numpy().astype(np.float64)
    return dense


@pytest.mark.parametrize(("bits", "group", "symmetric", "awq", "op"), [
    (4, 32, True, False, "MatMulNBits"),
    (4, 16, False, False, "MatMulNBits"),
    (2, 32, False, False, "MatMulNBits"),
    (8, 32, True, True, "MatMulNBits"),
    (3, 16, True, False, "MatMulNBits"),  # 3-bit codes in a 4-bit container
    (3, 32, False, True, "MatMulNBits"),
    (4, IN, False, False, "MatMulNBits"),  # per channel: 96 = 3 blocks of 32
    (8, 48, True, False, "MatMulNBits"),  # 48 = 3 blocks of 16
    (6, 32, False, False, "MatMulNBits"),  # 6-bit codes in an 8-bit container
    (6, 16, True, True, "MatMulNBits"),
])
def test_affine_weights_match_numpy(bits, group, symmetric, awq, op) -> None:
    weight = _affine(bits, group, symmetric, awq)
    x = np.random.default_rng(1).standard_normal((5, IN)).astype(np.float32)
    y, ops, how = _run(weight, x)
    assert op in ops
    if bits in (3, 6):  # onnxruntime's MatMulNBits runs 2, 4 and 8 bits only
        assert f"{bits}-bit codes stored in {4 if bits == 3 else 8} bits" in how
    expected = x.astype(np.float64) @ _numpy_affine(weight).T
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize(("bits", "group_rows"), [(2, 16), (4, 16), (4, OUT), (6, 8)])
def test_palettes_match_numpy(bits: int, group_rows: int) -> None:
    g = torch.Generator().manual_seed(bits)
    indices = torch.randint(0, 1 << bits, (OUT, IN), generator=g, dtype=torch.uint8)
    lut = torch.randn(OUT // group_rows, 1 << bits, generator=g).half()
    weight = PaletteQuantized(indices, lut, bits, group_rows)
    x = np.random.default_rng(2).standard_normal((3, IN)).astype(np.float32)
    y, ops, how = _run(weight, x)
    assert "Gather" in ops and f"indices stored in {4 if bits <= 4 else 8} bits" in how
    table = lut.float().numpy()
    dense = np.array([[table[r // group_rows, indices[r, j]] for j in range(IN)]
                      for r in range(OUT)])
    np.testing.assert_allclose(y, x @ dense.T, rtol=1e-5, atol=1e-5)


def test_a_group_no_op_carries_is_left_to_the_caller() -> None:
    odd = AffineQuantized(torch.zeros(OUT, 24, dtype=torch.uint8),
                          torch.ones(OUT, 3).half(), None, 4, 8)  # 8 < MatMulNBits' 16
    assert compressed_weight(odd, "A", "Y", "layer") is None
