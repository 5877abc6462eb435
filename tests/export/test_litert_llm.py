"""LLM export to LiteRT on the fake Llama: two signatures over one set of weights, run by
ai-edge-litert in a child process; chunked, padded prefill gives PyTorch's tokens; the
artifact's integer codes are carried as weight-only int8/int4."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from compress.quant.palettize import palettize
from compress.quant.rtn import rtn_quantize
from export.litert.llm import export_llm_litert
from export.litert.verify_llm import litert_greedy, verify_llm_litert
from export.litert.weights import pack_int4
from models import create_model

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

CONTEXT = 40
PROMPT = [40, 41, 72, 101, 108, 108, 111, 50, 60, 70, 80]  # 11 tokens: chunks of 8 + 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    loaded = create_model("fake-qwen2")  # q/k/v biases and tied head on top of Llama's
    path = tmp_path_factory.mktemp("litert") / "m.tflite"
    return loaded.module, export_llm_litert(loaded.module, path, max_context=CONTEXT,
                                            prefill_tokens=8)


def test_signatures_and_shapes(exported) -> None:
    from ai_edge_litert.interpreter import Interpreter

    _, result = exported
    interpreter = Interpreter(model_path=str(result.path))
    signatures = interpreter.get_signature_list()
    assert set(signatures) == {"prefill", "decode"}
    details = interpreter.get_signature_runner("prefill").get_input_details()
    ids = details[signatures["prefill"]["inputs"][0]]
    keys = details[signatures["prefill"]["inputs"][2]]
    assert list(ids["shape"]) == [1, 8]
    assert list(keys["shape"]) == list(result.decoder.shape.cache_shape())


def test_chunked_prefill_and_decode_match_pytorch(exported) -> None:
    model, result = exported
    check = verify_llm_litert(result.path, model, PROMPT, 10, CONTEXT)
    assert check.tokens_match, (check.pytorch_tokens, check.runtime_tokens)
    assert check.logits.relative_error < 1e-4 and check.logits.cosine > 0.99999


def test_a_prompt_past_the_context_fails_in_the_child_with_its_message(exported) -> None:
    from export.errors import ExportError

    _, result = exported
    with pytest.raises(ExportError, match="exceed the exported context of 40"):
        litert_greedy(result.path, PROMPT * 4, 4, CONTEXT)


def _compressed_fake():
    """fake-llama with every affine layout LiteRT carries, an AWQ layer and a palette layer
    (which it carries mapped to int4, export.litert.palette_map), written back dequantized
    as the loader does."""
    loaded = create_model("fake-llama")
    generator = torch.Generator().manual_seed(0)
    packed = {}
    for name, module in loaded.module.named_modules():
        if not isinstance(module, torch.nn.Linear) or "layers" not in name:
            continue
        weight = module.weight.data
        if "up_proj" in name:
            packed[name] = rtn_quantize(weight, 8, None, symmetric=True)
        elif "down_proj" in name:
            packed[name] = rtn_quantize(weight, 8, 32, symmetric=False)
        elif "gate_proj" in name:
            packed[name] = palettize(weight, 4, 16, 10)
        elif "q_proj" in name:
            packed[name] = rtn_quantize(weight, 3, 32, symmetric=True)
        elif "o_proj" in name:  # 6-bit codes (a mixed-bit allocation's) in int8
            packed[name] = rtn_quantize(weight, 6, None, symmetric=False)
        elif "v_proj" in name:
            scale = (torch.rand(weight.shape[1], generator=generator) + 0.5).half()
            packed[name] = dataclasses.replace(
                rtn_quantize(weight * scale.float(), 4, 32, symmetric=False), input_scale=scale)
        else:
            packed[name] = rtn_quantize(weight, 4, None, symmetric=False)
        module.weight.data.copy_(packed[name].dequantize())
    return loaded.module, packed


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    model, packed = _compressed_fake()
    folder = tmp_path_factory.mktemp("litert-q")
    dense = export_llm_litert(model, folder / "dense.tflite", max_context=CONTEXT,
                              prefill_tokens=8)
    return model, packed, dense, export_llm_litert(model, folder / "q.tflite",
                                                   max_context=CONTEXT, prefill_tokens=8,
                                                   quantized=packed)


def test_integer_weights_are_carried_as_weight_only_dequantize(compressed) -> None:
    _, packed, dense, result = compressed
    how = {record.name.split(".", 3)[-1]: record.carried_as for record in result.carried}
    assert how == {"mlp.up_proj": "DEQUANTIZE int8 per channel",
                   "mlp.down_proj": "DEQUANTIZE int8 block 32",
                   "self_attn.q_proj": "DEQUANTIZE int4 block 32 (3-bit codes)",
                   "self_attn.v_proj": "DEQUANTIZE int4 block 32 + DIV by AWQ scales",
                   "self_attn.k_proj": "DEQUANTIZE int4 per channel",
                   "self_attn.o_proj": "DEQUANTIZE int8 per channel (6-bit codes)",
                   "mlp.gate_proj": "DEQUANTIZE int4 block 32 (mapped from a 4-bit palette)"}
    assert len(result.carried) == 2 * len(how) and result.dropped == []
    assert set(result.mapped) == {n for n in packed if "gate_proj" in n}
    # Codes replace float32 weights: 1 byte (int8) or half a byte (int4) instead of 4, plus
    # TFLite's quantization parameters (float32 scale, int64 zero point) per group, held
    # by each signature's codes tensor.
    carried = [p for n, p in packed.items() if "gate_proj" not in n]
    float_bytes = sum(4 * p.shape[0] * p.shape[1] for p in carried)
    code_bytes = sum(p.shape[0] * p.shape[1] * (1 if p.bits > 4 else 0.5) for p in carried)
    param_bytes = sum(2 * 12 * p.scales.numel() for p in carried)
    saved = dense.path.stat().st_size - result.path.stat().st_size
    assert saved > 0.9 * (float_bytes - code_bytes - param_bytes)


def test_file_holds_the_artifacts_codes_and_scales(compressed) -> None:
    """Read one grouped int8 layer back from the flatbuffer and compare with the artifact."""
    from ai_edge_litert import schema_py_generated as schema

    _, packed, _, result = compressed
    name = next(n for n in packed if "down_proj" in n)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(result.path.read_bytes(), 0))
    tensors = [t for t in model.subgraphs[0].tensors
               if t.type == schema.TensorType.INT8 and list(t.shape) == [
                   packed[name].shape[0] * packed[name].shape[1] // 32, 32]]
    expected = packed[name].codes.numpy().astype(np.int16) - 128
    matches = [t for t in tensors
               if np.array_equal(np.asarray(model.buffers[t.buffer].data).view(np.int8),
                                 expected.reshape(-1))]
    assert len(matches) == 1
    quant = matches[0].quantization
    np.testing.assert_array_equal(np.asarray(quant.scale, np.float32),
                                  packed[name].scales.float().numpy().reshape(-1))
    np.testing.assert_array_equal(np.asarray(quant.zeroPoint),
                                  packed[name].zeros.numpy().astype(np.int64).reshape(-1) - 128)


def test_compressed_file_gives_pytorch_tokens(compressed) -> None:
    model, _, _, result = compressed
    check = verify_llm_litert(result.path, model, PROMPT, 10, CONTEXT, result.reference,
                              result.palettes)
    assert check.tokens_match, (check.pytorch_tokens, check.runtime_tokens)
    assert check.logits.relative_error < 1e-5


def test_int4_packing_puts_the_first_value_in_the_low_nibble() -> None:
    values = np.array([-8, 7, -1, 0, 3], np.int8)
    assert pack_int4(values).tolist() == [0x78, 0x0F, 0x03]
