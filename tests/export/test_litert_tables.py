"""LiteRT carries the embedding table and LM head quantized at export (--embedding-bits)
and maps palettes to blockwise affine codes: the flatbuffer is read back and compared
with the packed values, the loss is recomputed in numpy, and the file's greedy tokens
equal those of a reference that computes with the same values."""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest
import torch

from compress.quant.palettize import palettize
from compress.quant.rtn import rtn_quantize
from export.errors import ExportError
from export.litert.llm import export_llm_litert
from export.litert.palette_map import SHRINKS, affine_grid_fit, map_palette, mapped_layers
from export.litert.tables import quantize_tables
from export.litert.verify_llm import litert_greedy, verify_llm_litert
from export.litert.weights import pack_int4
from export.options import ExportOptions
from export.registry import get_exporter
from models import create_model

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

CONTEXT = 40
PROMPT = [40, 41, 72, 101, 108, 108, 111, 50, 60, 70, 80]


def _rtn(bits: int):
    return functools.partial(rtn_quantize, bits=bits, group_size=32, symmetric=False)


def _flatbuffer(path):
    from ai_edge_litert import schema_py_generated as schema

    return schema, schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))


def _palettized(name: str):
    """A fake model whose gate projections are 4-bit palettes (written back dequantized,
    as the loader does)."""
    loaded = create_model(name)
    packed = {}
    for module_name, module in loaded.module.named_modules():
        if module_name.endswith("mlp.gate_proj"):
            packed[module_name] = palettize(module.weight.data, 4, 16, 10)
            module.weight.data.copy_(packed[module_name].dequantize())
    return loaded.module, packed


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    model, packed = _palettized("fake-llama")
    folder = tmp_path_factory.mktemp("tables")
    tables = quantize_tables(model, _rtn(4), packed)
    dense = export_llm_litert(model, folder / "dense.tflite", max_context=CONTEXT,
                              prefill_tokens=8)
    result = export_llm_litert(model, folder / "q.tflite", max_context=CONTEXT,
                               prefill_tokens=8, quantized=packed, tables=tables)
    return model, packed, tables[0], dense, result


def _ops_reading(model, schema, subgraph, tensor_index: int) -> list[str]:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names[model.operatorCodes[op.opcodeIndex].builtinCode]
            for op in subgraph.operators if tensor_index in list(op.inputs)]


def test_tied_table_is_one_int4_buffer_read_by_gather_and_dequantize(tied) -> None:
    model, _, tables, _, result = tied
    packed = tables.by_name["model.embed_tokens.weight"]
    assert packed.bits == 4 and packed.group_size == 32
    schema, fb = _flatbuffer(result.path)
    expected = pack_int4(packed.codes.numpy().astype(np.int16) - 8).tobytes()
    (buffer,) = [i for i, b in enumerate(fb.buffers)
                 if b.data is not None and np.asarray(b.data).tobytes() == expected]
    vocab, width = packed.shape
    for subgraph in fb.subgraphs[:2]:  # prefill, decode
        readers = {tuple(int(d) for d in t.shape): _ops_reading(fb, schema, subgraph, i)
                   for i, t in enumerate(subgraph.tensors) if t.buffer == buffer}
        assert all(t.type == schema.TensorType.INT4 for t in subgraph.tensors
                   if t.buffer == buffer)
        assert readers == {(vocab, width // 32, 32): ["GATHER"],
                           (vocab * width // 32, 32): ["DEQUANTIZE"]}
    # The float table is gone from the file.
    table = model.model.embed_tokens.weight.detach().numpy().tobytes()
    assert not any(b.data is not None and np.asarray(b.data).tobytes() == table
                   for b in fb.buffers)
    how = [(r.name, r.carried_as) for r in result.carried if "gate_proj" not in r.name]
    assert how == [("model.embed_tokens", "GATHER int4 rows, block 32 (quantized at export)"),
                   ("lm_head (tied)", "DEQUANTIZE int4 block 32 (quantized at export)")]


def _buffer_bytes(path) -> int:
    _, fb = _flatbuffer(path)
    return sum(len(b.data) for b in fb.buffers if b.data is not None)


def test_file_size_drops_by_the_float_weights_less_codes_and_scales(tied) -> None:
    _, packed, tables, dense, result = tied
    layers = [tables.by_name["model.embed_tokens.weight"],
              *(result.reference.by_name[f"{name}.weight"] for name in packed)]
    float_bytes = sum(4 * p.shape[0] * p.shape[1] for p in layers)
    code_bytes = sum(p.shape[0] * p.shape[1] / 2 for p in layers)  # all int4
    lookup_bytes = 8 * layers[0].scales.numel()  # the table's float32 scale + zero per group
    # Constant data: the float weights went, int4 codes and the lookup's scales came.
    dropped = _buffer_bytes(dense.path) - _buffer_bytes(result.path)
    assert float_bytes - code_bytes - lookup_bytes - 512 < dropped
    assert dropped <= float_bytes - code_bytes - lookup_bytes
    # The whole file: less each signature's DEQUANTIZE parameters (float32 scale + int64
    # zero point per group) and the new ops' tensors (a few hundred bytes each).
    param_bytes = sum(2 * 12 * p.scales.numel() for p in layers)
    saved = dense.path.stat().st_size - result.path.stat().st_size
    assert saved > 0.8 * (float_bytes - code_bytes - lookup_bytes - param_bytes) > 0


def test_tied_file_gives_the_tokens_of_the_reference_with_the_same_values(tied) -> None:
    model, _, tables, _, result = tied
    check = verify_llm_litert(result.path, model, PROMPT, 10, CONTEXT, result.reference,
                              result.palettes)
    assert check.tokens_match, (check.pytorch_tokens, check.runtime_tokens)
    assert check.logits.relative_error < 1e-5
    # The reference really used the quantized table: the float model's logits differ.
    with result.palettes.swapped_into(model), torch.no_grad():
        float_logits = model(torch.tensor([PROMPT])).logits[0].numpy()
    with tables.swapped_into(model), torch.no_grad():
        table_logits = model(torch.tensor([PROMPT])).logits[0].numpy()
    assert np.abs(float_logits - table_logits).max() > 1e-3
    # ... and the comparison with the artifact is the file's logits against the model
    # with its own palettes and the table as exported.
    _, runtime_logits = litert_greedy(result.path, PROMPT, 10, CONTEXT)
    assert check.to_dict()["vs_artifact"]["logits"]["max_abs_error"] == pytest.approx(
        float(np.abs(runtime_logits - table_logits).max()), rel=1e-4)
    assert check.artifact_logits.max_abs_error > 10 * check.logits.max_abs_error


def _dequantized_from_file(path, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A carried linear's weight as the file's DEQUANTIZE computes it, in numpy."""
    schema, fb = _flatbuffer(path)
    subgraph = fb.subgraphs[0]
    (tensor,) = [t for t in subgraph.tensors if t.name == f"{name}/codes".encode()]
    raw = np.asarray(fb.buffers[tensor.buffer].data, np.uint8)
    nibbles = np.stack([raw & 0xF, raw >> 4], axis=1).reshape(-1).astype(np.int64)
    codes = np.where(nibbles >= 8, nibbles - 16, nibbles)[:shape[0] * shape[1]]
    rows = codes.reshape(-1, tensor.shape[1])
    scale = np.asarray(tensor.quantization.scale, np.float32)[:, None]
    zero = np.asarray(tensor.quantization.zeroPoint, np.int64)[:, None]
    return (scale * (rows - zero).astype(np.float32)).reshape(shape)


def test_palette_mapping_loss_matches_numpy(tied) -> None:
    _, packed, _, _, result = tied
    assert set(result.mapped) == set(packed)
    for name, palette in packed.items():
        lut, index = palette.lut.float().numpy(), palette.indices.numpy().astype(np.int64)
        table_of_row = np.arange(palette.shape[0]) // palette.group_rows
        exact = np.take_along_axis(lut[table_of_row], index, axis=1)
        mapped = _dequantized_from_file(result.path, name, palette.shape)
        loss = np.linalg.norm(mapped - exact) / np.linalg.norm(exact)
        assert 0 < loss < 0.2
        assert result.mapped[name] == pytest.approx(loss, rel=1e-5)
    assert result.extra_details["mapped_palettes"].keys() == packed.keys()


def test_shrunk_grid_is_never_worse_than_min_max() -> None:
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    fitted = affine_grid_fit(weight, 4, 32)
    blocks = weight.numpy().reshape(8, 2, 32)
    low, high = np.minimum(blocks.min(2), 0), np.maximum(blocks.max(2), 0)
    scale = ((high - low) / 15).astype(np.float16).astype(np.float32)
    zero = np.clip(np.round(-low / scale), 0, 15)
    codes = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 15)
    min_max = (scale[..., None] * (codes - zero[..., None])).reshape(8, 64)
    errors = ((fitted.dequantize().numpy() - weight.numpy()) ** 2).reshape(8, 2, 32).sum(2)
    plain = ((min_max - weight.numpy()) ** 2).reshape(8, 2, 32).sum(2)
    # Never worse per group (a = 1 is a candidate), better overall on Gaussian weights.
    assert np.all(errors <= plain + 1e-6) and errors.sum() < 0.99 * plain.sum()
    assert SHRINKS[0] == 1.0


def test_untied_table_is_only_gathered_and_the_head_dequantized(tmp_path) -> None:
    model = create_model("fake-mistral").module
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    tables = quantize_tables(model, _rtn(8), None)
    result = export_llm_litert(model, tmp_path / "m.tflite", max_context=CONTEXT,
                               prefill_tokens=8, tables=tables)
    assert [(r.name, r.carried_as) for r in result.carried] == [
        ("model.embed_tokens", "GATHER int8 rows, block 32 (quantized at export)"),
        ("lm_head", "DEQUANTIZE int8 block 32 (quantized at export)")]
    schema, fb = _flatbuffer(result.path)
    packed = tables[0].by_name["model.embed_tokens.weight"]
    expected = (packed.codes.numpy().astype(np.int16) - 128).astype(np.int8).tobytes()
    (buffer,) = [i for i, b in enumerate(fb.buffers)
                 if b.data is not None and np.asarray(b.data).tobytes() == expected]
    for subgraph in fb.subgraphs[:2]:
        readers = [_ops_reading(fb, schema, subgraph, i)
                   for i, t in enumerate(subgraph.tensors) if t.buffer == buffer]
        assert readers == [["GATHER"]]  # no DEQUANTIZE: the table is never float
    check = verify_llm_litert(result.path, model, PROMPT, 10, CONTEXT, result.reference)
    assert check.tokens_match and check.logits.relative_error < 1e-5


def test_require_carried_refuses_a_mapped_palette_before_converting(tmp_path) -> None:
    model, packed = _palettized("fake-llama")
    artifact = types.SimpleNamespace(module=model, quantized=packed)
    out = tmp_path / "m.tflite"
    with pytest.raises(ExportError) as error:
        get_exporter("tflite").write_llm(artifact, out, ExportOptions(require_carried=True))
    message = str(error.value)
    assert "layer model.layers.0.mlp.gate_proj is palettized (4-bit lookup table)" in message
    assert "int4" in message and "--require-carried" in message and "\n" not in message
    assert not out.exists()


def test_palettes_map_to_int8_on_request_with_a_much_smaller_loss() -> None:
    _, packed = _palettized("fake-llama")
    as_int4, as_int8 = mapped_layers(packed), mapped_layers(packed, 8)
    for name in packed:
        assert as_int4[name][1].bits == 4 and as_int8[name][1].bits == 8
        assert as_int8[name][1].group_size == 32
        assert as_int8[name][2] < as_int4[name][2] / 5


def test_palette_map_bits_is_refused_for_a_target_that_carries_palettes(
        toolkit_cli, tmp_path) -> None:
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--out",
                         tmp_path / "m.onnx", "--palette-map-bits", "8")
    assert result.code == 2 and "--palette-map-bits is for tflite" in result.err
    assert len(result.err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_a_palette_whose_inputs_32_does_not_divide_maps_per_channel() -> None:
    weight = torch.randn(16, 48, generator=torch.Generator().manual_seed(1))
    palette = palettize(weight, 4, 16, 10)
    mapped, loss = map_palette(palette)
    assert mapped.group_size == 48 and mapped.bits == 4 and mapped.shape == (16, 48)
    exact = palette.dequantize().numpy()
    assert loss == pytest.approx(np.linalg.norm(mapped.dequantize().numpy() - exact)
                                 / np.linalg.norm(exact), rel=1e-6)
