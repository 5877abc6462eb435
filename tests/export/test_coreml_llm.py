"""Core ML export on the fake Llama (opened, not run: Core ML runs only on macOS): the
stateful I/O, one compile-time op per compressed layer, and weights that decompress with
coremltools' reference code to exactly the weights the toolkit evaluated (fp16)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from compress.quant.palettize import palettize
from compress.quant.rtn import rtn_quantize
from models import create_model

pytest.importorskip("coremltools")
CONTEXT = 32


def _mixed_fake():
    """palettes on the MLP, 3-bit symmetric q, 4- and 6-bit asymmetric o (6-bit codes sit
    in uint8), AWQ-scaled v, and a pruned float k: every path of export.coreml.weights."""
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
        elif "o_proj" in name:
            bits = 6 if ".layers.1." in name else 4
            packed[name] = rtn_quantize(weight, bits, 32, symmetric=False)
        elif "v_proj" in name:
            packed[name] = rtn_quantize(weight, 4, 32, symmetric=True)
            packed[name].input_scale = torch.linspace(0.5, 2.0, weight.shape[1]).half()
        else:  # k_proj: prune half of each row by magnitude, keep it float
            threshold = weight.abs().median(dim=1, keepdim=True).values
            module.weight.data = torch.where(weight.abs() > threshold, weight, 0.0)
            continue
        module.weight.data.copy_(packed[name].dequantize())
    return loaded.module, packed


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from export.coreml.llm import export_llm_coreml

    model, packed = _mixed_fake()
    path = tmp_path_factory.mktemp("coreml") / "m.mlpackage"
    return export_llm_coreml(model, path, max_context=CONTEXT, quantized=packed)


def test_each_layer_is_carried_by_its_op_or_reported(exported) -> None:
    how = Counter(record.carried_as.split(" (")[0] for record in exported.carried)
    assert how == {"constexpr_lut_to_dense 4-bit, 8 tables": 4,
                   "constexpr_lut_to_dense 4-bit, 4 tables": 2,
                   "constexpr_blockwise_shift_scale 3-bit, block 32": 2,
                   "constexpr_blockwise_shift_scale 4-bit, block 32": 1,
                   "constexpr_blockwise_shift_scale 6-bit, block 32": 1,
                   "constexpr_blockwise_shift_scale 4-bit, block 32 + AWQ input scaling": 2,
                   "constexpr_sparse_to_dense": 2}
    assert exported.dropped == []


def test_stateful_io_and_compressed_ops(exported) -> None:
    from export.coreml.inspect import describe_mlpackage

    described = describe_mlpackage(exported.path)
    cache = [2, 2, CONTEXT, 16]
    assert described["inputs"] == {"input_ids": [[1, 1], [1, CONTEXT]], "position": [1]}
    assert list(described["outputs"]) == ["logits"]
    assert described["states"] == {"keys": cache, "values": cache}
    ops = described["ops"]
    assert ops["constexpr_lut_to_dense"] == 6 and ops["constexpr_blockwise_shift_scale"] == 6
    assert ops["constexpr_sparse_to_dense"] == 2
    assert ops["read_state"] == 2 and ops["write_state"] == 2


def test_awq_layers_scale_their_input_by_the_inverse_scales(exported) -> None:
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    model = ct.models.MLModel(str(exported.path), skip_model_load=True)
    spec = model.get_spec()
    program = load_milproto(spec, spec.specificationVersion, file_weights_dir=str(
        exported.path / "Data" / "com.apple.CoreML" / "weights"))
    scalings = [op for op in program.functions["main"].operations
                if op.op_type == "mul" and op.name.endswith("_awq_input")]
    assert len(scalings) == 2
    scale = torch.linspace(0.5, 2.0, scalings[0].y.val.shape[0]).half().float()
    expected = (1 / scale).half().numpy()
    for op in scalings:
        np.testing.assert_array_equal(op.y.val, expected)
        assert op.outputs[0].child_ops[0].op_type in ("linear", "matmul")


def test_weights_decompress_to_the_evaluated_weights(exported) -> None:
    from export.coreml.inspect import decompressed_weights
    from export.coreml.verify_llm import verify_coreml_llm

    stored = [np.asarray(w, np.float16) for w in decompressed_weights(exported.path).values()]
    assert len(stored) == 14
    decoder = exported.decoder
    for export_name, source in decoder.source_names.items():
        dense = decoder.get_parameter(f"{export_name}.weight_t").detach().t().numpy()
        if "v_proj" in source:  # AWQ: the file holds dequant(codes) = W * s
            scale = torch.linspace(0.5, 2.0, dense.shape[1]).half().float().numpy()
            assert sum(np.allclose(w, dense * scale, rtol=2e-3, atol=1e-4) for w in stored
                       if w.shape == dense.shape) == 1, source
            continue
        assert sum(np.array_equal(w, dense.astype(np.float16)) for w in stored
                   if w.shape == dense.shape) >= 1, source
    report = verify_coreml_llm(exported.path, exported)
    assert report["passed"] and report["numerics"].startswith("numerics not checked")


def test_compressed_package_is_smaller_than_the_float_one(exported, tmp_path) -> None:
    """The same architecture with plain fp16 weights (the fake's own, uncompressed)."""
    from export.coreml.llm import export_llm_coreml

    def size(path):
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    plain = export_llm_coreml(create_model("fake-llama").module, tmp_path / "f.mlpackage",
                              max_context=CONTEXT)
    assert plain.carried == []
    assert size(exported.path) < 0.75 * size(plain.path)
