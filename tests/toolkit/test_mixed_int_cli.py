"""`toolkit compress --method rtn|gptq --target-bits ...` and the same in a recipe, on the
fake Llama: the summary's per-type line, the artifact's stored bits read from its own
file, every layer on its width's grid, the ONNX export of a 3/4/6-bit mix verifying
(greedy tokens equal), and bad input as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

import models
from tests.toolkit.test_cli import SMALL, block_linears

QUANT_FILE = "edge_toolkit_quantized.safetensors"
MIXED = ["--target-bits", "4.3", "--bits-choices", "3,4,6", "--group-size", "32"]


@pytest.fixture(scope="module")
def rtn_mixed(toolkit_cli, fake_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rtn-mixed")
    out, report = tmp / "rtn", tmp / "rtn.json"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "rtn", *MIXED,
                         "--out", out, "--json", report, *SMALL[:-1])  # keep the summary
    assert result.code == 0, result.err
    return out, json.loads(report.read_text(encoding="utf-8")), result.out


def test_summary_and_report_show_the_allocation_per_layer_type(rtn_mixed):
    _, report, printed = rtn_mixed
    allocation = report["quantization"]["allocation"]
    assert allocation["sensitivity_kind"] == "measured" and allocation["choices"] == [3, 4, 6]
    assert 4.25 <= allocation["achieved_bits"] <= 4.3 + 1e-9
    line = next(x for x in printed.splitlines() if x.startswith("mixed bits"))
    assert line.startswith(f"mixed bits (measured sensitivity): "
                           f"{allocation['achieved_bits']:.3f} bits per weight (target 4.3)")
    assert str(allocation["by_type"]) in line
    counted: dict[str, dict[str, int]] = {}
    for name, bits in allocation["layer_bits"].items():
        kind = name.split(".", 3)[3]  # model.layers.I.<type>
        counted.setdefault(kind, {}).setdefault(str(bits), 0)
        counted[kind][str(bits)] += 1
    assert allocation["by_type"] == counted
    stage = report["recipe"]["stages"][0]
    assert stage["target_bits"] == 4.3 and stage["bits_choices"] == [3, 4, 6]


def test_stored_bits_come_from_the_files_tensors_and_each_layer_is_on_its_grid(rtn_mixed):
    out, report, _ = rtn_mixed
    allocation, quant = report["quantization"]["allocation"], report["quantization"]
    # Mixed widths (and 3/6-bit codes) have no compressed-tensors form: Edge Toolkit's file.
    assert not (out / "model.safetensors").exists()
    stored, weights = 0, 0
    with safe_open(str(out / QUANT_FILE), framework="pt") as handle:
        layout = json.loads(handle.metadata()["edge_toolkit.quantization"])["layers"]
        for key in handle.keys():
            name, kind = key.rsplit(".", 1)
            if name in layout and kind in ("qweight", "scales", "qzeros"):
                tensor = handle.get_tensor(key)
                stored += tensor.numel() * tensor.element_size()
    for name, meta in layout.items():
        out_f, in_f = meta["shape"]
        weights += out_f * in_f
        assert meta["bits"] == allocation["layer_bits"][name] and meta["group_size"] == 32
    assert 8 * stored / weights == pytest.approx(allocation["achieved_bits"], abs=1e-12)
    assert quant["bits_per_weight"] == pytest.approx(allocation["achieved_bits"], abs=1e-12)
    linears = block_linears(models.load_model(out).module)
    assert set(linears) == set(allocation["layer_bits"])
    for name, bits in allocation["layer_bits"].items():
        weight = linears[name].weight.detach()
        for group in weight.split(32, dim=1):  # 32 inputs share one scale and zero point
            for row in group:
                assert row.unique().numel() <= 1 << bits, (name, bits)


def test_onnx_export_of_the_mix_verifies(toolkit_cli, rtn_mixed, tmp_path):
    pytest.importorskip("onnxruntime")
    out, report, _ = rtn_mixed
    onnx_path, data_path = tmp_path / "m.onnx", tmp_path / "m.json"
    result = toolkit_cli("export", "onnx", "--model", out, "--out", onnx_path, "--json",
                         data_path, "--max-context", "48", "--new-tokens", "8", "--quiet")
    assert result.code == 0, result.err
    data = json.loads(data_path.read_text(encoding="utf-8"))
    assert data["verdict"] == "passed" and data["dropped"] == [] and data["lost"] == []
    check = data["verification"]
    assert check["tokens_match"] and len(check["runtime_tokens"]) == 8
    widths = set(report["quantization"]["allocation"]["layer_bits"].values())
    carried = " ".join(data["carried"])
    for bits, container in ((3, 4), (6, 8)):  # MatMulNBits runs 2, 4 and 8 bits only
        if bits in widths:
            assert f"the {bits}-bit codes stored in {container} bits" in carried
    assert sum(data["carried"].values()) == 14


def test_gptq_mix_from_a_recipe(toolkit_cli, fake_model_dir, tmp_path):
    recipe = tmp_path / "gptq-mixed.yaml"
    recipe.write_text(f"model: {fake_model_dir}\n"
                      "calibration: {samples: 4, seq_len: 32, seed: 0}\n"
                      "eval: {windows: 2, seq_len: 64}\n"
                      "stages:\n"
                      "  - {method: gptq, group_size: 32, target_bits: 4.0, "
                      "bits_choices: [3, 4, 6], sensitivity: relative}\n", encoding="utf-8")
    out, report = tmp_path / "gptq", tmp_path / "gptq.json"
    result = toolkit_cli("run", recipe, "--out", out, "--json", report, "--quiet")
    assert result.code == 0, result.err
    quant = json.loads(report.read_text(encoding="utf-8"))["quantization"]
    allocation = quant["allocation"]
    assert quant["method"] == "gptq" and allocation["sensitivity_kind"] == "relative"
    assert 3.95 <= allocation["achieved_bits"] <= 4.0 + 1e-9
    assert {name: layer["bits"] for name, layer in quant["layers"].items()} == \
        allocation["layer_bits"]


@pytest.mark.parametrize(("flags", "needle"), [
    (["--method", "rtn", "--target-bits", "3.1", "--bits-choices", "3,4"],
     "target 3.1 bits is below the smallest choice's cost (3 bits store 3.297 bits per "
     "weight with an fp16 scale and a 3-bit zero point per 64 inputs): raise target_bits or "
     "add a smaller choice"),
    (["--method", "gptq", "--target-bits", "4", "--bits-choices", "4"],
     "bits_choices (4,) needs at least two bit-widths to mix"),
    (["--method", "rtn", "--target-bits", "4", "--bits-choices", "3,5"],
     "bits_choices entry 5 is not supported by rtn: use one of 2, 3, 4, 6, 8"),
    (["--method", "gptq", "--target-bits", "7", "--group-size", "32"],
     "target 7 bits is above the largest choice's cost (6 bits store 6.688 bits per weight"),
    (["--method", "awq", "--target-bits", "4"], "--target-bits does not apply to --method awq"),
    (["--method", "rtn", "--target-bits", "4", "--engine", "streaming"],
     "mixed bit-widths (target_bits) need a sensitivity pre-pass over the whole model"),
])
def test_bad_mixed_input_is_one_line_and_exit_2(toolkit_cli, fake_model_dir, tmp_path, flags,
                                                needle):
    out = tmp_path / "out"
    result = toolkit_cli("compress", "--model", fake_model_dir, *flags, "--out", out, *SMALL)
    assert result.code == 2 and len(result.err_lines) == 1, result.err
    assert needle in result.err
    assert not out.exists() and [p.name for p in Path(tmp_path).iterdir()] == []
