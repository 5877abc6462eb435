"""The decode benchmark's bytes-per-token accounting on small exported files."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.llm_decode import PROMPT_TOKENS, onnx_bytes_per_token
from export.llm.decoder_weights import ModuleDecoderWeights
from export.onnx.decoder_graph import write_decoder_onnx
from models import create_model

onnx = pytest.importorskip("onnx")


def _write(tmp_path: Path, quantize: bool, external: bool, attention: str = "auto",
           model: str = "fake-llama"):
    from compress.quant.rtn import rtn_quantize

    weights = ModuleDecoderWeights(create_model(model).module, 128)
    if quantize:
        weights.quantize_tables(lambda w: rtn_quantize(w, 4, 16, symmetric=False))
    path = tmp_path / f"{model}-{'q' if quantize else 'f'}.onnx"
    write_decoder_onnx(weights, path, external=external, attention=attention)
    model = onnx.load(str(path))  # with its data: sizes counted independently here
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    return path, sizes, weights.shape


@pytest.mark.parametrize(("external", "attention"), [(False, "auto"), (True, "auto"),
                                                    (False, "standard")])
def test_a_tied_float_table_counts_because_the_head_reads_it(tmp_path, external, attention):
    path, sizes, shape = _write(tmp_path, quantize=False, external=external,
                                attention=attention)
    counted = onnx_bytes_per_token(path)
    # The fused attention reads the cache rows up to the step's position; the standard
    # graph reads its whole max-context cache.
    rows = PROMPT_TOKENS + 1 if attention == "auto" else shape.max_context
    assert rows < shape.max_context or attention == "standard"
    assert counted["cache"] == 2 * 4 * shape.layers * shape.kv_heads * rows * shape.head_dim
    assert counted["weights"] == sum(sizes.values())
    assert sizes["model.embed_tokens.weight"] > 0


def test_a_quantized_table_only_gathered_is_not_counted(tmp_path):
    """Untied (fake-mistral): the table's GatherBlockQuantized reads one row per token,
    so its bytes are left out; tied (fake-llama): the lookup reads the head's own codes
    (export.onnx.shared_table), which the head reads whole, so everything counts."""
    path, sizes, _ = _write(tmp_path, quantize=True, external=False, model="fake-mistral")
    counted = onnx_bytes_per_token(path)
    gathered = {n: s for n, s in sizes.items() if n.startswith("model.embed_tokens.")}
    assert gathered and "lm_head.B" in sizes  # the untied head has its own packed weight
    assert counted["weights"] == sum(sizes.values()) - sum(gathered.values())
    path, sizes, _ = _write(tmp_path, quantize=True, external=False)
    assert not any(n.startswith("model.embed_tokens.") for n in sizes)
    assert onnx_bytes_per_token(path)["weights"] == sum(sizes.values())


def test_accuracy_levels_per_weight_width_and_their_label(tmp_path):
    """A quantized head (4-bit here) marked 8-bit at level 4 beside level-0 4-bit linears,
    as the accuracy choice's middle step leaves a file; read back per width and labelled."""
    import torch

    from benchmarks.llm_decode_report import level_label
    from compress.quant.rtn import rtn_quantize
    from export.onnx.weights import set_accuracy_level

    module = create_model("fake-llama").module
    packed = {name: rtn_quantize(m.weight.data, 4, 16, symmetric=False)
              for name, m in module.named_modules()
              if isinstance(m, torch.nn.Linear) and "layers" in name}
    weights = ModuleDecoderWeights(module, 128, packed)
    weights.quantize_tables(lambda w: rtn_quantize(w, 4, 16, symmetric=False))
    path = tmp_path / "mixed.onnx"
    write_decoder_onnx(weights, path, external=False, attention="auto")
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    set_accuracy_level(model.graph.node, 0)
    head = next(n for n in nodes if n.name.startswith("lm_head"))
    next(a for a in head.attribute if a.name == "bits").i = 8
    set_accuracy_level([head], 4)
    onnx.save_model(model, str(path))
    counted = onnx_bytes_per_token(path)
    assert counted["accuracy_levels"] == [0, 4]
    assert counted["accuracy_levels_by_bits"] == {"4": [0], "8": [4]}
    assert level_label(counted) == "level 4 on 8-bit, 0 on 4-bit"
    assert level_label({"accuracy_levels": [4], "accuracy_levels_by_bits": {"4": [4]}}) \
        == "level 4"


@pytest.mark.parametrize("bits", [None, 4])
def test_the_large_litert_rows_say_how_the_table_and_head_were_written(bits):
    from benchmarks.llm_decode_report import _large_tflite_lines

    tflite = {"chunks": [{"file": "a_chunk1.tflite", "bytes": 2e9}],
              "bytes_per_token": {"total": 1e9}, "bf16_scale_loss_max": 1e-3,
              "export_peak_rss": 9e9, "export_wall": 600.0, "threads": {}}
    if bits:
        tflite["embedding_bits"] = bits
    text = "\n".join(_large_tflite_lines(tflite))
    if bits:
        assert "`toolkit export tflite --engine streaming --embedding-bits 4 --no-verify`" in text
        assert "table a lookup over its int4 codes, 4-bit linears and head as int4" in text
    else:  # results written before the tables were quantized in this row
        assert "`toolkit export tflite --engine streaming --no-verify`" in text
        assert "float table, 4-bit linears as int4" in text


def test_a_litert_table_counts_unless_only_its_lookup_reads_it():
    from benchmarks.litert_bytes import gathered_only

    int4_head = {"FULLY_CONNECTED int4 blockwise 64, dynamic int8 input": 210,
                 "FULLY_CONNECTED int4 blockwise 32, dynamic int8 input": 1,
                 "GATHER int4 rows, block 32 (quantized at export)": 1}
    assert gathered_only(int4_head) == (4, 32)
    shared = {"GATHER int8 rows, block 16 (quantized at export)": 1,
              "DEQUANTIZE int8 block 16 (quantized at export)": 1,  # the head, same codes
              "DEQUANTIZE int4 block 64": 210}
    assert gathered_only(shared) is None
    assert gathered_only({"DEQUANTIZE int4 block 64": 210}) is None  # a float table
    # the block linears' own DEQUANTIZE does not make the table shared
    assert gathered_only({"GATHER int8 rows, block 16 (quantized at export)": 1,
                          "DEQUANTIZE int4 block 64": 210}) == (8, 16)


def test_results_hold_no_machine_paths_whichever_way_the_work_folder_was_given(tmp_path,
                                                                                monkeypatch):
    from types import SimpleNamespace

    from benchmarks.llm_decode import _relative, _work_folder

    monkeypatch.chdir(tmp_path)
    work = _work_folder(SimpleNamespace(work=Path("runs") / "decode"))
    assert work == tmp_path / "runs" / "decode" and work.is_dir()
    absolute = str(tmp_path / "runs" / "decode" / "file0.onnx")
    value = {"path": absolute, "files": [f"{work}/file1.onnx", "other"]}
    assert _relative(value, work) == {"path": "file0.onnx",
                                      "files": ["file1.onnx", "other"]}
