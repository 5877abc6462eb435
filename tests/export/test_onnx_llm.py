"""LLM export to ONNX on the fake decoders: the re-authored decoder computes what the
Hugging Face model computes, onnxruntime gives the same logits and greedy tokens, and the
artifact's packed weights are in the file (smaller than the float export)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.quant.palettize import palettize
from compress.quant.rtn import rtn_quantize
from export.errors import ExportError
from export.llm.check import torch_greedy
from export.llm.export_decoder import ExportDecoder
from export.onnx.verify_llm import onnx_step, verify_llm_onnx
from models import create_model
from tests.export.decoder_steps import assert_decoder_matches_step_by_step

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONTEXT = 48
PROMPT = [40, 41, 72, 101, 108, 108, 111]


@pytest.mark.parametrize("name", ["fake-llama", "fake-mistral", "fake-qwen2"])
def test_export_decoder_equals_the_hf_model_step_by_step(name: str) -> None:
    assert_decoder_matches_step_by_step(create_model(name).module)


def test_gemma_is_refused_with_what_differs() -> None:
    with pytest.raises(ExportError, match=r"gemma models use \(1 \+ w\) RMSNorm"):
        ExportDecoder.from_hf(create_model("fake-gemma").module, CONTEXT)


def test_context_beyond_the_model_is_refused() -> None:
    with pytest.raises(ExportError, match="exceeds the model's max_position_embeddings"):
        ExportDecoder.from_hf(create_model("fake-llama").module, 4096)


def _export(model, path: Path, quantized=None):
    from export.onnx.llm import export_llm_onnx

    return export_llm_onnx(model, path, max_context=CONTEXT, quantized=quantized)


def _compressed_fake():
    """fake-llama with a mix of packed formats, written back dequantized as the loader does."""
    loaded = create_model("fake-llama")
    packed = {}
    for name, module in loaded.module.named_modules():
        if not isinstance(module, torch.nn.Linear) or "layers" not in name:
            continue
        weight = module.weight.data
        if "mlp" in name:
            packed[name] = palettize(weight, 4, 16, 10)
        elif "q_proj" in name:
            packed[name] = rtn_quantize(weight, 3, 32, symmetric=True)
        else:
            packed[name] = rtn_quantize(weight, 4, 32, symmetric=False)
        module.weight.data.copy_(packed[name].dequantize())
    return loaded.module, packed


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("onnx")
    dense = create_model("fake-llama").module
    compressed, packed = _compressed_fake()
    return {"dense": (dense, _export(dense, folder / "dense.onnx")),
            "compressed": (compressed, _export(compressed, folder / "q.onnx", packed))}


@pytest.mark.parametrize("variant", ["dense", "compressed"])
def test_onnxruntime_matches_pytorch_logits_and_greedy_tokens(exports, variant) -> None:
    model, result = exports[variant]
    shape = result.decoder.shape
    check = verify_llm_onnx(result.path, model, PROMPT, 12, shape.cache_shape(), CONTEXT)
    assert check.tokens_match, (check.pytorch_tokens, check.runtime_tokens)
    assert check.logits.relative_error < 1e-4 and check.logits.cosine > 0.99999
    tokens, logits = torch_greedy(model, PROMPT, 12)
    assert tokens == check.pytorch_tokens and logits.shape == (len(PROMPT), shape.vocab)


def test_decode_after_prefill_equals_one_long_prefill(exports) -> None:
    _, result = exports["compressed"]
    step = onnx_step(result.path)
    cache = np.zeros(result.decoder.shape.cache_shape(), dtype=np.float32)
    ids = np.array([PROMPT], dtype=np.int64)
    whole, _, _ = step(ids, np.array([0]), cache, cache)
    _, keys, values = step(ids[:, :5], np.array([0]), cache, cache)
    tail, _, _ = step(ids[:, 5:], np.array([5]), keys, values)
    np.testing.assert_allclose(tail[0], whole[0, 5:], rtol=1e-5, atol=1e-5)


def test_compressed_file_carries_packed_ops_and_is_smaller(exports) -> None:
    _, dense = exports["dense"]
    _, compressed = exports["compressed"]
    ops = Counter(node.op_type for node in onnx.load(str(compressed.path)).graph.node)
    assert ops["MatMulNBits"] == 8 and ops["Gather"] >= 6  # q/k/v/o x 2; 3 MLPs x 2 + embed
    how = Counter(record.carried_as.split(" (")[0] for record in compressed.carried)
    assert how == {"MatMulNBits 4-bit, block 32": 8, "palette 4-bit via Gather": 6}
    assert not compressed.dropped
    weights_dense = sum(p.numel() for n, p in dense.decoder.named_parameters()
                        if n.endswith("weight_t")) * 4
    saved = dense.path.stat().st_size - compressed.path.stat().st_size
    assert saved > 0.6 * weights_dense  # 4-bit codes replace fp32 linears
    metadata = {p.key: p.value for p in onnx.load(str(compressed.path)).metadata_props}
    assert '"max_context": 48' in metadata["edge_toolkit.llm"]
