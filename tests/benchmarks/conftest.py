"""Fixtures shared by the benchmark scripts' tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def exported_fake_llm_onnx(tmp_path_factory):
    """fake-llama with its block linears at 4-bit RTN, written as the fused ONNX decoder
    with room for the profile's 64-token prefill."""
    from compress.quant.rtn import rtn_quantize
    from export.llm.decoder_weights import ModuleDecoderWeights
    from export.onnx.decoder_graph import write_decoder_onnx
    from models import create_model

    loaded = create_model("fake-llama")
    packed = {}
    for name, module in loaded.module.named_modules():
        if isinstance(module, torch.nn.Linear) and "layers" in name:
            packed[name] = rtn_quantize(module.weight.data, 4, 16, symmetric=False)
            module.weight.data.copy_(packed[name].dequantize())
    path = tmp_path_factory.mktemp("profile") / "fake.onnx"
    write_decoder_onnx(ModuleDecoderWeights(loaded.module, 80, packed), path, external=False,
                       attention="fused")
    return path
