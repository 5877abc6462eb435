"""benchmarks/matmul_nbits_rate.py: the layer shapes read from a real (tiny) ONNX LLM file,
node bytes against the file's own initializers, the synthetic graph's products against a
numpy dequantization, and the section's rates, serial model and verdict from hand-made
timings, computed here independently."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import matmul_nbits_rate as rate

ort = pytest.importorskip("onnxruntime")


def test_file_shapes_and_node_bytes_match_the_files_initializers(exported_fake_llm_onnx):
    import onnx

    model = onnx.load(str(exported_fake_llm_onnx))
    sizes = {t.name: len(t.raw_data) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    shapes = rate.file_shapes(exported_fake_llm_onnx)
    assert sum(s["nodes"] for s in shapes.values()) == len(nodes)
    assert all(".N." in name for name in shapes)  # the block index is folded
    for node in nodes:
        layer_type = next(t for t in shapes if node.name.startswith(
            t.replace(".N.", f".{node.name.split('.')[2]}.")))
        stored = sum(sizes[i] for i in node.input[1:] if i)
        assert rate.node_bytes(shapes[layer_type]) == stored


def _dequantized(model, index: int, shape: dict) -> np.ndarray:
    """W [N, K] from the node's packed codes (low nibble first), scales and zero points."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    n, k, block = shape["N"], shape["K"], shape["block_size"]
    packed = inits[f"B{index}"].reshape(n, -1)
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, -1)[:, :k]
    scales = inits[f"S{index}"].reshape(n, -1)
    if shape["zero_points"]:
        zp = inits[f"Z{index}"].reshape(n, -1)
        zeros = np.stack([zp & 15, zp >> 4], axis=-1).reshape(n, -1)[:, :k // block]
    else:
        zeros = np.full(scales.shape, 8)
    groups = np.arange(k) // block
    return scales[:, groups] * (codes.astype(np.float64) - zeros[:, groups])


@pytest.mark.parametrize("zero_points", [True, False])
def test_synthetic_graph_is_the_described_matmul(zero_points):
    import onnx

    shape = {"N": 24, "K": 64, "bits": 4, "block_size": 16, "zero_points": zero_points}
    blob = rate.synthetic_model(shape, copies=2, level=0)
    model = onnx.load_from_string(blob)
    assert sum(len(t.raw_data) for t in model.graph.initializer) == 2 * rate.node_bytes(shape)
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((1, 1, 64)).astype(np.float32)
    outputs = session.run(None, {"x": x})
    for index, y in enumerate(outputs):
        expected = x[0, 0].astype(np.float64) @ _dequantized(model, index, shape).T
        np.testing.assert_allclose(y[0, 0], expected, rtol=1e-4, atol=1e-5)


def test_kernel_times_are_one_positive_median_per_node(tmp_path):
    shape = {"N": 32, "K": 64, "bits": 4, "block_size": 32, "zero_points": True}
    times = rate.kernel_us(rate.synthetic_model(shape, 3, 4), 64, 1, 5, tmp_path)
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert not list(tmp_path.glob("rate*.json"))  # the profile file is removed


def _data() -> dict:
    shape = {"N": 100, "K": 500, "bits": 4, "block_size": 64, "zero_points": True, "nodes": 3}
    return {"environment": {"cpu": "test cpu", "cores": 2, "date": "2026-12-04"},
            "file": "f.onnx", "shapes": {"layers.N.proj": shape}, "load_average_1min_end": 0.4,
            "runs": [{"threads": 1, "bandwidth_before": {"gb_per_s": 10.0},
                      "bandwidth_after": {"gb_per_s": 12.0},
                      "rows": [{"layer_type": "layers.N.proj", "level": 4, "bytes": 100_000,
                                "cache": {"us": 5.0, "us_p10": 4.0, "us_p90": 6.0},
                                "dram": {"us": 20.0, "us_p10": 19.0, "us_p90": 22.0}}]}]}


def test_rates_serial_model_and_verdict():
    text = rate.markdown(_data())
    assert "B = 10.0 GB/s" in text  # the lower of before and after
    row = next(line for line in text.splitlines() if line.startswith("| layers.N.proj"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # 100 KB in 5 us = 20 MB/ms; in 20 us = 5 MB/ms = 50% of 10 GB/s;
    # serial 1 / (1/10 + 1/20) = 6.67 GB/s = 67%
    assert cells[5:] == ["100", "5.0 (4.0-6.0)", "20.0", "20.0 (19.0-22.0)", "5.0", "50%", "67%"]
    # three nodes: 300 KB in 60 us; 1.5 x 0.3 MB / 10 GB/s = 0.045 ms < 0.06 ms
    assert "0.06 ms from DRAM, 5.0 MB/ms, **50% of B**" in text
    assert "MB / B = 0.05 ms; the faster level takes 0.06 ms (over that)" in text


def test_the_8_bit_head_row_has_no_nodes_in_the_step():
    shapes = {"lm_head": {"N": 10, "K": 64, "bits": 4, "block_size": 32,
                          "zero_points": True, "nodes": 1}}
    (name, head), = rate.eight_bit_head(shapes).items()
    assert head == {**shapes["lm_head"], "bits": 8, "nodes": 0} and "8 bits" in name
    # codes, 2 float32 scales and 2 one-byte zero points per row
    assert rate.node_bytes(head) == 10 * 64 + 10 * 2 * 4 + 10 * 2
    assert rate.eight_bit_head({}) == {}
