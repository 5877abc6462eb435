"""Core ML chunked export and --embedding-bits (opened, not run: Core ML runs only on
macOS). The chunk modules, run in sequence in PyTorch, compute the one-package decoder's
logits; each package has the inputs, outputs and states of its place in the chain; every
compressed weight, the quantized table and head included, decompresses to exactly the
weight the toolkit evaluated (fp16); the chunk sizes add up to what was written."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from compress.quant.rtn import rtn_quantize
from export.coreml.chunk_plan import plan_chunks
from export.errors import ExportError

pytest.importorskip("coremltools")
CONTEXT = 32
TABLE_4BIT = functools.partial(rtn_quantize, bits=4, group_size=16, symmetric=False)


def _tiny_llama(layers: int = 4, tied: bool = True, seed: int = 0):
    """A 4-layer Llama (64 wide, vocab 259) with 4-bit RTN linears (dequantized in the
    module, as a loaded artifact holds them) and their packed forms."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         vocab_size=259, max_position_embeddings=256,
                         tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).eval()
    packed = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            packed[name] = rtn_quantize(module.weight.data, 4, 32, symmetric=False)
            module.weight.data.copy_(packed[name].dequantize())
    return model, packed


# --- the plan --------------------------------------------------------------------------


def test_plan_balances_weights_not_layer_counts() -> None:
    plain = plan_chunks(4, 2)
    assert [(c.start, c.stop) for c in plain] == [(0, 2), (2, 4)]
    # a table worth two layers in the first chunk: 2 + 4 = 6, half is 3 -> one layer
    table = plan_chunks(4, 2, first_extra=2.0)
    assert [(c.start, c.stop) for c in table] == [(0, 1), (1, 4)]
    assert table[0].first and table[1].last and not table[0].last


def test_plan_for_an_afm_3b_shape_covers_every_layer_once() -> None:
    """26 layers of 3072 wide (99.0M params each), a 49152 x 3072 tied table (151M) in the
    first chunk and again as the head in the last: 8 chunks within one layer of each
    other's weight."""
    layer = (3072 * (3072 * 2 + 1024 * 2) + 3 * 3072 * 8032)
    table = 49152 * 3072
    plan = plan_chunks(26, 8, layer_weight=layer, first_extra=table, last_extra=table)
    assert [c.start for c in plan][0] == 0 and plan[-1].stop == 26
    assert all(a.stop == b.start for a, b in zip(plan, plan[1:], strict=False))
    weights = [len(c.layers) * layer + (table if c.first else 0) + (table if c.last else 0)
               for c in plan]
    assert max(weights) - min(weights) <= 1.6 * layer


@pytest.mark.parametrize(("count", "words"), [(0, "positive integer"),
                                              (5, "exceeds the model's 4 decoder layers")])
def test_plan_refuses_bad_counts(count, words) -> None:
    with pytest.raises(ExportError, match=words):
        plan_chunks(4, count)


# --- the chunk modules against the one-package decoder ---------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_chunks_in_sequence_compute_the_unchunked_logits(tied) -> None:
    from export.coreml.chunk_module import chunk_module
    from export.coreml.chunked import plan_for
    from export.coreml.llm import StatefulDecoder
    from export.llm.decoder_weights import ModuleDecoderWeights
    from export.llm.export_decoder import ExportDecoder

    model, packed = _tiny_llama(tied=tied)
    whole = StatefulDecoder(ExportDecoder.from_hf(model, CONTEXT, cache_write="blend"))
    weights = ModuleDecoderWeights(model, CONTEXT, packed)
    chunks = [chunk_module(weights, c) for c in plan_for(weights, 3)]
    assert [len(c.layers) for c in chunks] == [1, 2, 1]  # the table weighs in at both ends
    steps = [(torch.tensor([[5, 9, 200, 17, 3]]), 0), (torch.tensor([[42]]), 5),
             (torch.tensor([[7, 8]]), 6)]
    with torch.no_grad():
        for ids, start in steps:
            position = torch.tensor([start])
            expected = whole(ids, position)
            x = ids
            for chunk in chunks:
                x = chunk(x, position)
            assert x.shape == expected.shape == (1, ids.shape[1], 259)
            torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    # and the decoder is the Hugging Face model's (first step, empty cache)
    with torch.no_grad():
        reference = model(steps[0][0]).logits
    whole2 = StatefulDecoder(ExportDecoder.from_hf(model, CONTEXT, cache_write="blend"))
    torch.testing.assert_close(whole2(steps[0][0], torch.tensor([0])), reference,
                               rtol=1e-4, atol=1e-4)


def test_lora_adapters_ride_along_in_the_package_and_in_every_chunk() -> None:
    """Large adapters on every block linear: the one-package decoder and the chunks in
    sequence compute the Hugging Face model WITH them (and far from it without)."""
    from export.coreml.chunk_module import chunk_module
    from export.coreml.chunked import plan_for
    from export.coreml.llm import StatefulDecoder
    from export.llm.decoder_weights import ModuleDecoderWeights
    from export.llm.export_decoder import ExportDecoder
    from models.qformat.lora import LoraAdapter, attach_adapter, detach_adapters

    model, packed = _tiny_llama()
    g = torch.Generator().manual_seed(1)
    for name in packed:
        linear = model.get_submodule(name)
        attach_adapter(linear, LoraAdapter(torch.randn(4, linear.in_features, generator=g),
                                           torch.randn(linear.out_features, 4, generator=g)
                                           * 0.05, 2.0))
    ids = torch.tensor([[5, 9, 200, 17, 3]])
    with torch.no_grad():
        reference = model(ids).logits
        whole = StatefulDecoder(ExportDecoder.from_hf(model, CONTEXT, cache_write="blend"))
        torch.testing.assert_close(whole(ids, torch.tensor([0])), reference, rtol=1e-4,
                                   atol=1e-4)
        weights = ModuleDecoderWeights(model, CONTEXT, packed)
        x = ids
        for chunk in [chunk_module(weights, c) for c in plan_for(weights, 3)]:
            x = chunk(x, torch.tensor([0]))
        torch.testing.assert_close(x, reference, rtol=1e-4, atol=1e-4)
        detach_adapters(model)
        assert (model(ids).logits - reference).abs().max() > 0.1


# --- converted chunks ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    from export.coreml.chunked import export_chunked_coreml
    from export.llm.decoder_weights import ModuleDecoderWeights

    model, packed = _tiny_llama(tied=True)
    out = tmp_path_factory.mktemp("chunks") / "m.mlpackage"
    weights = ModuleDecoderWeights(model, CONTEXT, packed)
    return export_chunked_coreml(weights, out, chunks=3, table_quantizer=TABLE_4BIT)


def test_each_chunk_has_its_io_and_states(chunked) -> None:
    from export.coreml.inspect import describe_mlpackage

    names = [c.path.name for c in chunked.chunks]
    assert names == ["m_chunk1.mlpackage", "m_chunk2.mlpackage", "m_chunk3.mlpackage"]
    described = [describe_mlpackage(c.path) for c in chunked.chunks]
    assert described[0]["inputs"] == {"input_ids": [[1, 1], [1, CONTEXT]], "position": [1]}
    for later in described[1:]:
        assert later["inputs"] == {"hidden": [[1, 1], [1, CONTEXT], [64, 64]],
                                   "position": [1]}
    assert [list(d["outputs"]) for d in described] == [["hidden_out"], ["hidden_out"],
                                                       ["logits"]]
    for d, layers in zip(described, (1, 2, 1), strict=True):
        cache = [layers, 2, CONTEXT, 16]
        assert d["states"] == {"keys": cache, "values": cache}
        assert d["ops"]["read_state"] == 2 and d["ops"]["write_state"] == 2


def test_linears_and_tables_are_carried_and_decompress_exactly(chunked) -> None:
    from export.coreml.verify_chunks import verify_chunked_coreml

    table = "constexpr_blockwise_shift_scale 4-bit, block 16 (quantized at export)"
    linear = "constexpr_blockwise_shift_scale 4-bit, block 32"
    per_chunk = [[r.carried_as for r in c.carried] for c in chunked.chunks]
    # 7 linears a layer; the tied table once in the first chunk (gather) and once as the
    # head in the last (a package cannot read another's weights)
    assert [p.count(linear) for p in per_chunk] == [7, 14, 7]
    assert [p.count(table) for p in per_chunk] == [1, 0, 1]
    assert [r.name for r in chunked.chunks[0].carried if r.carried_as == table] == [
        "model.embed_tokens"]
    assert [r.name for r in chunked.chunks[2].carried if r.carried_as == table] == [
        "lm_head"]
    assert chunked.dropped == []
    report = verify_chunked_coreml(chunked)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    assert len(report["checks"]) == 9


def test_the_table_op_decompresses_to_the_rtn_table(chunked) -> None:
    """Independently of the exporter: RTN of the table, dequantized in numpy, is what
    coremltools' reference decompression of the first chunk's table op gives."""
    from export.coreml.inspect import decompressed_weights

    table = chunked.decoder.float32(chunked.decoder.embedding_name).numpy()
    groups = table.reshape(259, 4, 16)
    low, high = groups.min(-1, keepdims=True), groups.max(-1, keepdims=True)
    scale = ((high - low) / 15).astype(np.float16)
    zero = np.clip(np.round(-low / scale.astype(np.float32)), 0, 15)
    code = np.clip(np.round(groups / scale.astype(np.float32)) + zero, 0, 15)
    expected = (scale.astype(np.float32) * (code - zero)).reshape(259, 64)
    stored = [w for w in decompressed_weights(chunked.chunks[0].path).values()
              if w.shape == (259, 64)]
    assert len(stored) == 1
    np.testing.assert_allclose(stored[0].astype(np.float32), expected, rtol=0,
                               atol=float(scale.max()) * 0.51 + 1e-3)


def test_chunk_sizes_add_up_to_the_files(chunked) -> None:
    from export.sizes import written_bytes

    total = written_bytes(chunked.chunks[0].path)  # every file in the folder
    assert sum(c.file_bytes for c in chunked.chunks) == total
    assert [d["file"] for d in chunked.extra_details["chunks"]] == [
        "m_chunk1.mlpackage", "m_chunk2.mlpackage", "m_chunk3.mlpackage"]


def test_one_package_carries_an_untied_head_quantized_at_export(tmp_path) -> None:
    from export.coreml.llm import export_llm_coreml
    from export.coreml.verify_llm import verify_coreml_llm

    model, packed = _tiny_llama(layers=2, tied=False)
    result = export_llm_coreml(model, tmp_path / "m.mlpackage", max_context=CONTEXT,
                               quantized=packed, table_quantizer=TABLE_4BIT)
    tables = sorted(r.name for r in result.carried if r.carried_as.endswith(
        "(quantized at export)"))
    assert tables == ["lm_head", "model.embed_tokens"]
    report = verify_coreml_llm(result.path, result)
    assert report["passed"], report["checks"]
    assert report["ops"]["constexpr_blockwise_shift_scale"] == 14 + 2


# --- the command -----------------------------------------------------------------------


def test_cli_streams_a_checkpoint_into_chunks(toolkit_cli, fake_model_dir, tmp_path) -> None:
    out, report = tmp_path / "m.mlpackage", tmp_path / "r.json"
    result = toolkit_cli("export", "coreml", "--model", fake_model_dir, "--out", out,
                         "--chunks", "2", "--engine", "streaming", "--embedding-bits", "8",
                         "--max-context", "32", "--new-tokens", "4", "--json", report)
    assert result.code == 0, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m_chunk1.mlpackage", "m_chunk2.mlpackage", "r.json"]
    data = json.loads(report.read_text())
    assert [c["file"] for c in data["chunks"]] == ["m_chunk1.mlpackage", "m_chunk2.mlpackage"]
    assert sum(c["bytes"] for c in data["chunks"]) == data["file_bytes"]
    assert data["verdict"] == "passed"
    assert any("8-bit" in how and "quantized at export" in how for how in data["carried"])
    assert "chunk 2 of 2 io" in result.out


def test_cli_refuses_chunks_for_a_one_file_target(toolkit_cli, tmp_path) -> None:
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--out",
                         tmp_path / "m.onnx", "--chunks", "2")
    assert result.code == 2 and "--chunks splits Core ML and LiteRT LLMs" in result.err
    assert list(tmp_path.iterdir()) == []


def test_report_names_the_chunk_packages_not_the_unwritten_out_path() -> None:
    from export.report import ExportReport
    from export.report_rows import report_rows

    chunks = [{"file": f"m_chunk{i}.mlpackage", "bytes": 1, "layers": [i, i], "cache": [],
               "carried_layers": 0} for i in (1, 2, 3)]
    report = ExportReport("coreml", "coremltools", "src", 3, 12, path="/x/m.mlpackage",
                          details={"chunks": chunks})
    assert report_rows(report)[0] == ["file", "3 packages: m_chunk1.mlpackage .. "
                                              "m_chunk3.mlpackage"]
    single = ExportReport("coreml", "coremltools", "src", 3, 12, path="/x/m.mlpackage",
                          details={"chunks": chunks[:1]})
    assert report_rows(single)[0] == ["file", "/x/m.mlpackage"]
