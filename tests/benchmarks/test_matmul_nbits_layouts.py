"""benchmarks/matmul_nbits_layouts.py: every layout's node bytes against a real MatMulNBits
graph's initializers, the step sums and the goal's verdict from hand-made timings,
computed here independently."""

from __future__ import annotations

import pytest

from benchmarks import matmul_nbits_layouts as layouts
from benchmarks import matmul_nbits_rate as rate

pytest.importorskip("onnxruntime")


def test_layouts_cover_every_block_with_and_without_zero_points():
    got = layouts.layouts([16, 64])
    assert got == [{"block_size": 16, "zero_points": True},
                   {"block_size": 16, "zero_points": False},
                   {"block_size": 64, "zero_points": True},
                   {"block_size": 64, "zero_points": False}]


@pytest.mark.parametrize("layout", layouts.layouts([16, 128]))
def test_a_laid_out_shape_has_the_bytes_of_its_graph(layout):
    import onnx

    shape = {"N": 8, "K": 200, "bits": 4, "block_size": 64, "zero_points": True, "nodes": 3}
    laid = layouts.with_layout(shape, layout)
    assert laid["nodes"] == 3 and laid["block_size"] == layout["block_size"]
    model = onnx.load_from_string(rate.synthetic_model(laid, copies=1, level=4))
    stored = sum(len(t.raw_data) for t in model.graph.initializer)
    assert layouts.node_bytes(laid) == stored
    # K = 200 is padded to whole blocks: 13 of 16 or 2 of 128
    blocks = -(-200 // layout["block_size"])
    assert stored >= 8 * blocks * layout["block_size"] // 2 + 8 * blocks * 4


def _data(bandwidth_before=10.0, bandwidth_after=12.0) -> dict:
    shapes = {"a": {"N": 10, "K": 64, "bits": 4, "block_size": 32, "zero_points": True,
                    "nodes": 30},
              "head": {"N": 100, "K": 64, "bits": 4, "block_size": 32, "zero_points": True,
                       "nodes": 1}}

    def row(layout, layer_type, nbytes, us):
        return {"layout": layout, "layer_type": layer_type, "bytes": nbytes,
                "dram": {"us": us, "us_p10": us, "us_p90": us}}
    zero, sym = {"block_size": 32, "zero_points": True}, {"block_size": 32, "zero_points": False}
    rows = [row(zero, "a", 1000, 0.2), row(zero, "head", 10_000, 2.0),
            row(sym, "a", 900, 0.1), row(sym, "head", 9_000, 1.0)]
    return {"environment": {"cpu": "test cpu", "cores": 2, "date": "2026-12-05"},
            "file": "f.onnx", "level": 4, "shapes": shapes, "load_average_1min_end": 0.5,
            "runs": [{"threads": 1, "bandwidth_before": {"gb_per_s": bandwidth_before},
                      "bandwidth_after": {"gb_per_s": bandwidth_after}, "rows": rows}]}


def test_step_totals_weight_each_layer_type_by_its_nodes():
    data = _data()
    first, second = layouts.step_totals(data["runs"][0], data["shapes"])
    assert first["bytes"] == 30 * 1000 + 10_000 and first["us"] == pytest.approx(30 * 0.2 + 2)
    assert second["bytes"] == 30 * 900 + 9000 and second["us"] == pytest.approx(30 * 0.1 + 1)
    assert first["rates"] == {"a": pytest.approx(5.0), "head": pytest.approx(5.0)}


def test_section_rows_and_verdict():
    text = layouts.markdown(_data())
    assert "B = 10.0 GB/s" in text  # the lower probe
    rows = [line for line in text.splitlines() if line.startswith("| 32,")]
    # zero points: 40 KB in 8 us = 5 MB/ms = 50% of 10 GB/s; 1.5 x 40 KB / 10 GB/s = 0.006 ms
    assert rows[0].split(" | ")[1:] == ["5.0", "5.0", "0.0", "0.01", "50%", "0.01 |"]
    # symmetric: 36 KB in 4 us = 9 MB/ms = 90% of B
    assert rows[1].split(" | ")[1:] == ["9.0", "9.0", "0.0", "0.00", "90%", "0.01 |"]
    assert "Fastest layout per byte: 32, symmetric, 90% of B" in text
    assert "(meets the 67%" in text
    # 36 KB: 1.5 x 36 KB / 10 GB/s = 5.4 us allowed, 4 us taken
    assert "they take 0.00 ms where 1.5x the bound on their bytes allows 0.01 ms, " \
        "leaving 0.00 ms for every other operator" in text


def test_verdict_misses_when_no_layout_reaches_two_thirds_of_b():
    text = layouts.markdown(_data(bandwidth_before=20.0, bandwidth_after=20.0))
    assert "Fastest layout per byte: 32, symmetric, 45% of B" in text
    assert "(misses the 67%" in text
    assert "over before any other operator" in text  # 2.7 us allowed, 4 us taken


def test_a_block_that_does_not_divide_k_gets_its_own_verdict_line():
    data = _data()
    wide = {"block_size": 128, "zero_points": False}  # K = 64: padded, no quantizer writes it
    data["runs"][0]["rows"] += [
        {"layout": wide, "layer_type": "a", "bytes": 2000, "dram": {"us": 0.1}},
        {"layout": wide, "layer_type": "head", "bytes": 20_000, "dram": {"us": 1.0}}]
    text = layouts.markdown(data)
    # 128: 80 KB in 4 us = 20 MB/ms = 200% of B; among 32 only, symmetric at 90%
    assert "Fastest layout per byte: 128, symmetric, 200% of B" in text
    assert "Fastest among the blocks that divide every layer's input width (32: the group " \
        "sizes the quantizers accept for this model): 32, symmetric, 90% of B" in text
    assert "Fastest among" not in layouts.markdown(_data())  # every block divides there
