"""Chunked LiteRT export (export.litert.chunked) on a tiny 4-bit Llama: the int4 blockwise
mapping carries the codes and zero points exactly and moves each scale at most to bf16;
the chunk files hold INT4 blockwise FCs with no DEQUANTIZE; the chunks run in sequence
give the emulated PyTorch reference's logits and the same greedy tokens as the one-file
export and as PyTorch computing in float (the verdict's reference); bad chunk counts
are refused in one line with nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from compress.quant.rtn import rtn_quantize
from export.litert.blockwise import dynamic_int8, map_blockwise
from export.litert.run_chunks import chunk_files
from tests.export.test_coreml_chunks import _tiny_llama

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

CONTEXT = 32
PROMPT = [5, 9, 30, 100, 7, 3, 44, 61, 12]  # 9 tokens: prefill chunks of 8 + 1


def test_mapping_keeps_codes_and_zero_points_and_rounds_scales_to_bf16() -> None:
    torch.manual_seed(0)
    packed = rtn_quantize(torch.randn(48, 128), 4, 32, symmetric=False)
    mapped = map_blockwise(packed)
    assert mapped.codes.min() >= -8 and mapped.codes.max() <= 7
    assert torch.equal(mapped.codes.to(torch.int16) + 8, packed.codes.to(torch.int16))
    bf16 = mapped.scales.float().to(torch.bfloat16).float()
    assert torch.equal(bf16, mapped.scales.float())
    # main weight + correction per group = the artifact's weight with the rounded scales
    rebuilt = mapped.main_weight() + mapped.correction.repeat_interleave(32, dim=1)
    exact = packed.dequantize()
    # (s' - s)(c - h): at most 2^-8 of the scale times |c - h| <= 8
    bound = packed.scales.float().repeat_interleave(32, dim=1) * 2 ** -8 * 8 + 1e-6
    assert ((rebuilt - exact).abs() <= bound).all()
    assert 0 < mapped.loss < 2 ** -8
    symmetric = map_blockwise(rtn_quantize(torch.randn(8, 64), 4, 32, symmetric=True))
    assert symmetric.correction is None


def test_dynamic_int8_keeps_rows_on_255_steps_and_zero_exact() -> None:
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0]])
    q = dynamic_int8(x)
    assert q[0, 1] == 0 and torch.equal(q[1], x[1])
    assert (q[0] - x[0]).abs().max() <= 4.0 / 255 / 2 + 1e-7


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from export.litert.chunked import export_chunked_litert
    from export.litert.llm import export_llm_litert
    from export.llm.decoder_weights import ModuleDecoderWeights

    model, packed = _tiny_llama(4, tied=True)
    folder = tmp_path_factory.mktemp("litert-chunks")
    weights = ModuleDecoderWeights(model, CONTEXT, packed)
    chunked = export_chunked_litert(weights, folder / "m.tflite", chunks=2, prefill_tokens=8)
    one = export_llm_litert(model, folder / "one.tflite", max_context=CONTEXT,
                            prefill_tokens=8, quantized=packed)
    return model, chunked, one


def test_chunk_files_are_named_sized_and_hold_int4_blockwise_fcs(exported) -> None:
    from ai_edge_litert import schema_py_generated as schema

    _, result, _ = exported
    names = [p.name for p in result.files]
    assert names == ["m_chunk1.tflite", "m_chunk2.tflite"]
    assert chunk_files(result.files[1]) == result.files == chunk_files(result.path)
    assert [c["bytes"] for c in result.extra_details["chunks"]] == [
        p.stat().st_size for p in result.files]
    assert [c["layers"] for c in result.extra_details["chunks"]] == [[0, 1], [2, 3]]
    assert len(result.carried) == 28 and not result.dropped
    for path in result.files:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
        codes = {model.operatorCodes[op.opcodeIndex].builtinCode
                 for g in model.subgraphs for op in g.operators}
        assert schema.BuiltinOperator.DEQUANTIZE not in codes
        blockwise = [t for g in model.subgraphs for t in g.tensors
                     if t.type == schema.TensorType.INT4 and t.quantization is not None
                     and t.quantization.detailsType
                     == schema.QuantizationDetails.BlockwiseQuantization]
        assert len(blockwise) == 2 * 14  # 7 linears x 2 layers, once per signature
        assert all(t.quantization.details.blockSize == 32 for t in blockwise)
    losses = result.extra_details["bf16_scale_loss"]
    assert len(losses["layers"]) == 28 and losses["max"] < 2 ** -8


def test_chunks_in_sequence_match_the_emulated_reference_the_one_file_and_pytorch(
        exported) -> None:
    from export.litert.verify_chunks import verify_chunked_litert
    from export.litert.verify_llm import litert_greedy
    from models.registry import LoadedModel

    model, result, one = exported
    artifact = LoadedModel(module=model, tokenizer=None, source="tiny")
    check = verify_chunked_litert(result, artifact, PROMPT, 6)
    assert check.tokens_match, (check.pytorch_tokens, check.runtime_tokens)
    # the verdict's reference computes in float: the int8 inputs' cost; the emulation of
    # those inputs, reported beside it, is what the file computes
    assert check.allow_near_ties and check.rtol == 0.1
    assert check.logits.relative_error < 0.05
    assert check.to_dict()["vs_emulated"]["logits"]["relative_error"] < 1e-4
    assert check.artifact_tokens == check.runtime_tokens
    assert check.artifact_logits.relative_error < 0.05  # the int8 inputs' cost
    one_tokens, _ = litert_greedy(one.path, PROMPT, 6, CONTEXT)
    assert one_tokens == check.runtime_tokens


@pytest.fixture(scope="module")
def rtn_artifact(toolkit_cli, fake_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("litert-chunks-cli") / "rtn4"
    result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "rtn", "--bits",
                         "4", "--group-size", "32", "--out", out, "--calib-samples", "4",
                         "--seq-len", "32", "--eval-windows", "2", "--eval-seq-len", "64",
                         "--quiet")
    assert result.code == 0, result.err
    return out


def test_cli_streams_an_artifact_into_chunks(toolkit_cli, rtn_artifact, tmp_path) -> None:
    out, report = tmp_path / "m.tflite", tmp_path / "r.json"
    result = toolkit_cli("export", "tflite", "--model", rtn_artifact, "--out", out,
                         "--engine", "streaming", "--chunks", "2", "--max-context", "32",
                         "--prefill-tokens", "4", "--new-tokens", "4", "--json", report)
    assert result.code == 0, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m_chunk1.tflite", "m_chunk2.tflite", "r.json"]
    data = json.loads(report.read_text())
    assert [c["file"] for c in data["chunks"]] == ["m_chunk1.tflite", "m_chunk2.tflite"]
    assert sum(c["bytes"] for c in data["chunks"]) == data["file_bytes"]
    assert data["verdict"] == "passed"
    assert data["carried"] == {"FULLY_CONNECTED int4 blockwise 32, dynamic int8 input": 14}
    assert "2 files: m_chunk1.tflite .. m_chunk2.tflite" in result.out


def test_cli_refuses_more_chunks_than_layers_writing_nothing(toolkit_cli, rtn_artifact,
                                                           tmp_path) -> None:
    result = toolkit_cli("export", "tflite", "--model", rtn_artifact, "--out",
                         tmp_path / "m.tflite", "--engine", "streaming", "--chunks", "3",
                         "--max-context", "32", "--no-verify")
    assert result.code == 2
    assert result.err.strip().count("\n") == 0
    assert "--chunks 3 exceeds the model's 2 decoder layers" in result.err
    assert list(tmp_path.iterdir()) == []



def test_bench_runs_every_chunk_and_counts_every_file(exported) -> None:
    from toolkit.bench.runtimes import load_litert
    from toolkit.bench.session import file_bytes

    _, result, _ = exported
    runnable = load_litert(result.files[0], 1, PROMPT)
    logits = runnable.outputs()
    assert logits.shape == (len(PROMPT), 259)
    runnable.step()
    assert file_bytes(str(result.files[0])) == sum(p.stat().st_size for p in result.files)


@pytest.mark.slow
def test_bundle_lists_the_chunks_and_its_reader_runs_them(toolkit_cli, rtn_artifact,
                                                          tmp_path) -> None:
    from export.bundle_read import open_bundle, self_check

    bundle = tmp_path / "b"
    result = toolkit_cli("export", "tflite", "--model", rtn_artifact, "--bundle", bundle,
                         "--engine", "streaming", "--chunks", "2", "--max-context", "32",
                         "--prefill-tokens", "4", "--new-tokens", "4", "--quiet")
    assert result.code == 0, result.err
    opened = open_bundle(bundle)
    manifest = opened.manifest
    assert manifest["model"]["chunks"] == ["model_chunk1.tflite", "model_chunk2.tflite"]
    assert set(manifest["model"]["files"]) <= set(manifest["files"])
    assert [c["layers"] for c in manifest["chunks"]] == [[0, 0], [1, 1]]
    assert manifest["cache"]["shape"][0] == 2
    check = self_check(opened)
    assert check["tokenizer_matches"] and check["tokens_match"]
