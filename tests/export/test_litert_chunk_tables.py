"""--embedding-bits in the chunked LiteRT export: the embedding table and an untied head
quantized at export (a GATHER of the table's codes in the first chunk; in the last, at 4
bits the head's codes as int4 blockwise FCs like the block linears, a tied head holding
the table's codes again; at 8 bits a DEQUANTIZE of them): no chunk keeps a float copy of
either, the codes in the files are rtn_quantize's own, and the chunks in sequence give
the tokens and logits of the Hugging Face model holding the dequantized table and the
blockwise head (its block scales rounded to bf16, as XNNPACK reads them), computed apart."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from compress.quant.rtn import rtn_quantize
from export.litert.weights import pack_int4
from tests.export.test_coreml_chunks import _tiny_llama

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

CONTEXT = 32
PROMPT = [5, 9, 30, 100, 7, 3, 44, 61, 12]
RTN4 = functools.partial(rtn_quantize, bits=4, group_size=32, symmetric=False)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def exported(request, tmp_path_factory):
    from export.litert.chunked import export_chunked_litert
    from export.llm.decoder_weights import ModuleDecoderWeights

    model, packed = _tiny_llama(4, tied=request.param)
    weights = ModuleDecoderWeights(model, CONTEXT, packed)
    folder = tmp_path_factory.mktemp("chunk-tables")
    result = export_chunked_litert(weights, folder / "m.tflite", chunks=2, prefill_tokens=8,
                                   table_quantizer=RTN4)
    return model, packed, result


def _blockwise_weight(p) -> torch.Tensor:
    """s'(c - 8) + s(8 - z) per group of 32, s' = bf16(s): the int4 FC's weight plus the
    zero-point correction (export.litert.blockwise), from rtn_quantize's packed form."""
    s = p.scales.float()
    bf16 = s.to(torch.bfloat16).float()
    codes = p.codes.float().unflatten(1, (-1, 32))
    weight = bf16[..., None] * (codes - 8) + (s * (8 - p.zero_points().float()))[..., None]
    return weight.flatten(1)


def _buffers(path) -> list[bytes]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    return [np.asarray(b.data).tobytes() for b in model.buffers if b.data is not None]


def test_tables_are_codes_in_the_files_not_floats(exported) -> None:
    model, _, result = exported
    tied = model.config.tie_word_embeddings
    table = model.model.embed_tokens.weight.detach().float()
    head = model.lm_head.weight.detach().float()
    expected_table = RTN4(table)
    first, last = (_buffers(p) for p in result.files)
    table_codes = pack_int4(expected_table.codes.numpy().astype(np.int16) - 8).tobytes()
    # the lookup's codes (int4, the table's own rtn_quantize codes) in the first chunk ...
    assert table_codes in first
    records = {(r.name, r.carried_as) for r in result.carried}
    assert ("model.embed_tokens", "GATHER int4 rows, block 32 (quantized at export)") in records
    head_codes = (table_codes if tied else
                  pack_int4(RTN4(head).codes.numpy().astype(np.int16) - 8).tobytes())
    head_name = "lm_head (tied)" if tied else "lm_head"
    assert (head_name, "FULLY_CONNECTED int4 blockwise 32, dynamic int8 input") in records
    assert not any(r.carried_as.startswith("DEQUANTIZE") for r in result.carried)
    # ... and the head's in the last; no float32 table or head anywhere
    assert head_codes in last
    floats = {table.numpy().tobytes(), head.numpy().tobytes(),
              expected_table.dequantize().numpy().tobytes()}
    assert not floats & (set(first) | set(last))


def test_chunks_run_the_model_holding_the_dequantized_tables(exported) -> None:
    from export.litert.verify_chunks import verify_chunked_litert
    from models.registry import LoadedModel

    model, packed, result = exported
    check = verify_chunked_litert(result, LoadedModel(module=model, tokenizer=None,
                                                      source="tiny"), PROMPT, 6)
    # independent reference: the Hugging Face model with the tables' dequantized values
    # and the int4 FCs' block scales rounded to bf16, as XNNPACK reads them
    with torch.no_grad():
        for name, p in packed.items():
            model.get_submodule(name).weight.copy_(_blockwise_weight(p))
        table = model.model.embed_tokens.weight.detach().clone()
        head = table if model.config.tie_word_embeddings else model.lm_head.weight.detach()
        model.lm_head.weight = torch.nn.Parameter(_blockwise_weight(RTN4(head)))  # untied
        model.model.embed_tokens.weight.copy_(RTN4(table).dequantize())
        sequence = PROMPT + check.runtime_tokens[:-1]
        logits = model(torch.tensor([sequence])).logits[0].numpy()
    rows = logits[len(PROMPT) - 1:]
    assert [int(r.argmax()) for r in rows] == check.runtime_tokens
    assert check.tokens_match and check.logits.relative_error < 0.05
    # the verdict's reference (the chunk modules in float compute) is that model
    from export.litert.verify_chunks import file_logits

    reference = file_logits(result, sequence)[0]
    np.testing.assert_allclose(reference, logits, rtol=1e-4, atol=1e-4)


def test_cli_streams_chunks_with_quantized_tables(toolkit_cli, fake_model_dir, tmp_path) -> None:
    import json

    artifact = tmp_path / "rtn4"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "rtn", "--bits",
                         "4", "--group-size", "32", "--out", artifact, "--no-eval", "--quiet")
    assert result.code == 0, result.err
    sizes = {}
    for bits in (None, "8"):
        out, report = tmp_path / f"e{bits}" / "m.tflite", tmp_path / f"e{bits}.json"
        flags = ["--embedding-bits", bits] if bits else []
        result = toolkit_cli("export", "tflite", "--model", artifact, "--out", out,
                             "--engine", "streaming", "--chunks", "2", "--max-context", "32",
                             "--prefill-tokens", "4", "--new-tokens", "4", "--json", report,
                             "--quiet", *flags)
        assert result.code == 0, result.err
        data = json.loads(report.read_text())
        assert data["verdict"] == "passed"
        sizes[bits] = data["file_bytes"]
    carried = data["carried"]
    assert carried["GATHER int8 rows, block 32 (quantized at export)"] == 1
    assert carried["DEQUANTIZE int8 block 32 (quantized at export)"] == 1  # the tied head
    # fake-llama's tied 259 x 64 table, twice in float32 (lookup and head) without
    assert sizes[None] - sizes["8"] > 259 * 64 * 4


def test_the_decode_benchmarks_table_bytes_are_the_lookups_buffers(exported) -> None:
    """benchmarks/llm_decode_large leaves the lookup's table out of the bytes a decode step
    reads: its size there must be the codes, scales and zero points the first chunk holds."""
    from benchmarks.litert_bytes import gathered_table_bytes

    _, _, result = exported
    # the export's own codes (the model's table may have been changed by another test)
    packed = result.decoder.embedding_packed
    codes = pack_int4(packed.codes.numpy().astype(np.int16) - 8).tobytes()
    scales = packed.scales.float().numpy().tobytes()
    zeros = (packed.zero_points().float() - 8).numpy().tobytes()  # signed, as the codes
    assert {codes, scales, zeros} <= set(_buffers(result.files[0]))
    vocab, hidden = packed.shape
    assert gathered_table_bytes(vocab, hidden, 4, 32) == len(codes) + len(scales) + len(zeros)
