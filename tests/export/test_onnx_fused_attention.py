"""The fused ONNX decoder (export.onnx.gqa_attention: GroupQueryAttention with a per-layer
cache updated in place; q/k/v and gate/up stacked by export.onnx.fused_linears) against
the standard-ops graph, the Hugging Face model and numpy; its cache contract; its
float16 cache; and the choice of MatMulNBits' accuracy level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress.quant.rtn import rtn_quantize
from export.errors import ExportError
from export.llm.check import LlmVerification, torch_greedy
from export.llm.decoder_weights import LinearWeight, ModuleDecoderWeights
from export.llm.greedy import greedy_tokens, prefill
from export.onnx.accuracy_choice import (
    FLOAT_COMPUTE,
    INT8_COMPUTE,
    INT8_COMPUTE_RTOL,
    verify_choosing_level,
)
from export.onnx.cache_io import PER_LAYER, STACKED, per_layer_names
from export.onnx.decoder_graph import cache_layout, write_decoder_onnx
from export.onnx.fused_linears import fuse_linears
from export.onnx.gqa_attention import rotary_tables
from export.onnx.llm_session import OnnxDecoderSession
from export.options import ExportOptions
from export.verify import agreement
from models import create_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CONTEXT = 40
PROMPT = [40, 41, 72, 101, 108, 108, 111, 3, 17]


def _rtn4(name: str = "fake-llama"):
    """A model whose every block linear is 4-bit RTN (groups of 16, asymmetric): one
    format throughout, so q/k/v and gate/up stack."""
    loaded = create_model(name)
    packed = {}
    for module_name, module in loaded.module.named_modules():
        if isinstance(module, torch.nn.Linear) and "layers" in module_name:
            packed[module_name] = rtn_quantize(module.weight.data, 4, 16, symmetric=False)
            module.weight.data.copy_(packed[module_name].dequantize())
    return loaded.module, packed


def _write(module, packed, path: Path, **kwargs):
    return write_decoder_onnx(ModuleDecoderWeights(module, CONTEXT, packed), path,
                              external=False, **kwargs)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("fused")
    module, packed = _rtn4()
    return {"module": module,
            "fused": _write(module, packed, folder / "fused.onnx", attention="fused"),
            "standard": _write(module, packed, folder / "standard.onnx", attention="standard"),
            "half": _write(module, packed, folder / "half.onnx", attention="fused",
                           kv_cache_dtype="float16")}


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_fused_graph_has_one_attention_node_and_four_matmuls_per_block(files) -> None:
    ops = _ops(files["fused"].path)
    layers = files["fused"].decoder.shape.layers
    assert ops.count("GroupQueryAttention") == layers
    assert ops.count("MatMulNBits") == 4 * layers  # qkv, o, gate_up, down (the head: Gemm)
    assert len(ops) < len(_ops(files["standard"].path)) / 2
    # Every source linear keeps its own record, in the form its codes are carried in.
    assert sorted(r.name for r in files["fused"].carried) == sorted(
        r.name for r in files["standard"].carried)
    assert {r.carried_as for r in files["fused"].carried} == {"MatMulNBits 4-bit, block 16"}


def test_fused_and_standard_files_give_the_hf_models_tokens_and_logits(files) -> None:
    reference_tokens, reference_logits = torch_greedy(files["module"], PROMPT, 12)
    for variant in ("fused", "standard"):
        session = OnnxDecoderSession.open(files[variant].path)
        tokens, logits = greedy_tokens(session, PROMPT, 12, session.cache_shape, CONTEXT)
        assert tokens == reference_tokens, variant
        assert agreement("logits", logits, reference_logits).relative_error < 1e-5, variant


def test_per_layer_contract_and_in_place_cache(files) -> None:
    session = OnnxDecoderSession.open(files["fused"].path)
    layers = session.cache_shape[0]
    assert session.layout == PER_LAYER
    assert session.contract["cache_names"] == per_layer_names(layers)
    names = [i.name for i in session.session.get_inputs()]
    assert names == ["input_ids", "position"] + [
        f"past_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
    keys = np.zeros(session.cache_shape, dtype=np.float32)
    values = np.zeros_like(keys)
    _, keys_out, values_out = session(np.array([PROMPT[:4]]), np.array([0]), keys, values)
    assert keys_out is keys and values_out is values  # written in place, not copied
    written = np.abs(keys).sum(axis=(1, 3)) > 0  # [layers, context]
    assert written[:, :4].all() and not written[:, 4:].any()


def test_plain_session_run_feeding_present_back_gives_the_same_logits(files) -> None:
    """A caller without buffer binding (present fed back as past) computes the same."""
    path = files["fused"].path
    bound = OnnxDecoderSession.open(path)
    expected, _, _ = prefill(bound, PROMPT, bound.cache_shape, CONTEXT)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    layer_shape = [1, *bound.cache_shape[1:]]
    names = per_layer_names(bound.cache_shape[0])
    feeds = {n: np.zeros(layer_shape, np.float32) for n in names["past_keys"] +
             names["past_values"]}
    rows = []
    for position, token in enumerate(PROMPT):  # one token per call: the decode path
        out = plain.run(None, {"input_ids": np.array([[token]]),
                               "position": np.array([position]), **feeds})
        rows.append(out[0][0, -1])
        outputs = dict(zip([o.name for o in plain.get_outputs()], out, strict=True))
        for past, present in (("past_keys", "present_keys"), ("past_values", "present_values")):
            for a, b in zip(names[past], names[present], strict=True):
                feeds[a] = outputs[b]
    np.testing.assert_allclose(np.stack(rows), expected, rtol=1e-4, atol=1e-4)


def test_chunked_prefill_equals_one_call(files) -> None:
    session = OnnxDecoderSession.open(files["fused"].path)
    whole, keys, _ = prefill(session, PROMPT, session.cache_shape, CONTEXT)
    chunked, chunk_keys, _ = prefill(session, PROMPT, session.cache_shape, CONTEXT, chunk=4)
    used = len(PROMPT)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunk_keys[:, :, :used], keys[:, :, :used], rtol=1e-5,
                               atol=1e-6)


def test_float16_cache_keeps_tokens_and_halves_the_cache(files) -> None:
    half = OnnxDecoderSession.open(files["half"].path)
    assert half.cache_dtype == np.float16
    full = OnnxDecoderSession.open(files["fused"].path)
    tokens16, logits16 = greedy_tokens(half, PROMPT, 12, half.cache_shape, CONTEXT)
    tokens32, logits32 = greedy_tokens(full, PROMPT, 12, full.cache_shape, CONTEXT)
    assert tokens16 == tokens32
    assert agreement("logits", logits16, logits32).relative_error < 1e-2
    _, keys, _ = prefill(half, PROMPT, half.cache_shape, CONTEXT)
    assert keys.dtype == np.float16 and keys.nbytes * 2 == np.zeros(
        half.cache_shape, np.float32).nbytes


def test_rotary_tables_match_an_independent_formula() -> None:
    inv_freq = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)
    cos, sin = rotary_tables(inv_freq, 1.5, 5, np.float32)
    position, j = 3, 2
    assert cos.shape == (5, 8)
    assert cos[position, j] == pytest.approx(1.5 * np.cos(position * inv_freq[j]), rel=1e-6)
    assert sin[position, j] == pytest.approx(1.5 * np.sin(position * inv_freq[j]), rel=1e-6)


def test_stacked_linears_compute_the_parts_side_by_side() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 32)
    weights = [torch.randn(out, 32) for out in (16, 8, 8)]
    parts = [LinearWeight(f"p{i}", None, rtn_quantize(w, 4, 16, symmetric=i == 1),
                          torch.randn(w.shape[0]) if i == 2 else None)
             for i, w in enumerate(weights)]
    fused = fuse_linears(parts, "qkv")
    expected = torch.cat([x @ p.packed.dequantize().T + (0 if p.bias is None else p.bias)
                          for p in parts], dim=1)
    got = x @ fused.packed.dequantize().T + fused.bias
    torch.testing.assert_close(got, expected)
    floats = [LinearWeight("a", w, None, None) for w in weights[:2]]
    torch.testing.assert_close(fuse_linears(floats, "ab").weight, torch.cat(weights[:2]))
    other_bits = LinearWeight("b", None, rtn_quantize(weights[1], 8, 16, symmetric=False), None)
    assert fuse_linears([parts[0], other_bits], "x") is None  # formats differ
    assert fuse_linears([parts[0], floats[1]], "x") is None  # packed beside float


def test_attention_choice_and_its_one_line_refusals() -> None:
    assert cache_layout(16, "auto", "float32") == PER_LAYER
    assert cache_layout(8, "auto", "float32") == STACKED  # the CPU kernel needs 16 | D
    assert cache_layout(64, "standard", "float32") == STACKED
    with pytest.raises(ExportError, match="multiple of 16.*--onnx-attention standard"):
        cache_layout(8, "fused", "float32")
    with pytest.raises(ExportError, match="--kv-cache float16 needs the fused attention"):
        cache_layout(64, "standard", "float16")
    with pytest.raises(ExportError, match="--kv-cache 'int4' must be one of"):
        cache_layout(64, "auto", "int4")


def _check(tokens: list[int], error: float) -> LlmVerification:
    reference = np.ones((2, 4), dtype=np.float32)
    return LlmVerification("onnxruntime", agreement("logits", reference * (1 + error),
                                                    reference), [1, 2, 3], tokens, 2, 0.0)


def _levels(path: Path) -> set[int]:
    return {a.i for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"
            for a in n.attribute if a.name == "accuracy_level"}


def test_auto_accuracy_keeps_int8_compute_when_tokens_match(files, tmp_path) -> None:
    path = tmp_path / "auto.onnx"
    path.write_bytes(files["fused"].path.read_bytes())
    options = ExportOptions()
    check = verify_choosing_level(lambda: _check([1, 2, 3], 0.05), path, options, True)
    assert check.rtol == INT8_COMPUTE_RTOL and check.notes["accuracy_level"] == INT8_COMPUTE
    assert _levels(path) == set()  # the file is left as written


def test_auto_accuracy_falls_back_to_float_compute_when_tokens_differ(files, tmp_path
                                                                      ) -> None:
    path = tmp_path / "auto.onnx"
    path.write_bytes(files["fused"].path.read_bytes())
    calls = []

    def verify():
        calls.append(len(calls))
        return _check([1, 2, 9] if len(calls) == 1 else [1, 2, 3], 1e-6)
    check = verify_choosing_level(verify, path, ExportOptions(), True)
    assert len(calls) == 2 and check.tokens_match and check.rtol is None
    assert check.notes["accuracy_level"] == FLOAT_COMPUTE
    assert _levels(path) == {FLOAT_COMPUTE}  # rewritten in the graph


def _mixed_widths(files, path: Path) -> None:
    """The fused file written at level 4 with its last MatMulNBits marked 8-bit: only
    the attributes matter to the level choice (verification is stubbed)."""
    from export.onnx.weights import set_accuracy_level

    model = onnx.load(str(files["fused"].path))
    set_accuracy_level(model.graph.node, INT8_COMPUTE)
    last = [n for n in model.graph.node if n.op_type == "MatMulNBits"][-1]
    next(a for a in last.attribute if a.name == "bits").i = 8
    onnx.save_model(model, str(path))


def _levels_by_bits(path: Path) -> dict[int, set[int]]:
    levels: dict[int, set[int]] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            levels.setdefault(attrs["bits"], set()).add(attrs["accuracy_level"])
    return levels


def test_auto_accuracy_keeps_int8_compute_on_8_bit_weights_when_that_verifies(
        files, tmp_path) -> None:
    path = tmp_path / "mixed.onnx"
    _mixed_widths(files, path)
    seen = []

    def verify():  # int8 compute everywhere changes token 2; the mixed file does not
        seen.append(_levels_by_bits(path))
        return _check([1, 2, 9] if len(seen) == 1 else [1, 2, 3], 0.05)
    check = verify_choosing_level(verify, path, ExportOptions(), True)
    assert seen == [{4: {4}, 8: {4}}, {4: {0}, 8: {4}}]
    assert check.tokens_match and check.rtol == INT8_COMPUTE_RTOL
    assert check.notes["accuracy_level"] == {"4": FLOAT_COMPUTE, "8": INT8_COMPUTE}
    assert "8-bit weights only" in check.notes["accuracy_choice"]


def test_auto_accuracy_goes_to_float_everywhere_when_the_mixed_file_fails(
        files, tmp_path) -> None:
    path = tmp_path / "mixed.onnx"
    _mixed_widths(files, path)
    seen = []

    def verify():
        seen.append(_levels_by_bits(path))
        return _check([1, 2, 9] if len(seen) < 3 else [1, 2, 3], 1e-6)
    check = verify_choosing_level(verify, path, ExportOptions(), True)
    assert seen[1:] == [{4: {0}, 8: {4}}, {4: {0}, 8: {0}}]
    assert check.notes["accuracy_level"] == FLOAT_COMPUTE and check.rtol is None


def test_given_level_or_rtol_is_never_overridden(files, tmp_path) -> None:
    path = files["fused"].path
    given = ExportOptions(accuracy_level=0)
    assert verify_choosing_level(lambda: _check([1, 2, 9], 0.0), path, given, True).rtol is None
    # A float file (no MatMulNBits) is held to the float tolerance whatever the level.
    assert verify_choosing_level(lambda: _check([1, 2, 3], 0.0), path, ExportOptions(),
                                 False).rtol is None
    assert ExportOptions(rtol=0.01).rtol_given and not ExportOptions().rtol_given


def _near_tie_check(margin: float) -> LlmVerification:
    """Runtime tokens that part from PyTorch's at token 1, where PyTorch preferred its
    own by `margin`, teacher-forced agreement everywhere else."""
    from export.llm.near_ties import teacher_forced_agreement

    check = _check([1, 7, 8], 0.05)
    rows = np.full((3, 10), -5.0)
    for i, token in enumerate([1, 2, 8]):  # PyTorch fed the runtime's tokens
        rows[i, token] = 4.0
    rows[1, 7] = 4.0 - margin
    check.agreement = teacher_forced_agreement(rows, [1, 7, 8])
    return check


def test_auto_accuracy_keeps_int8_compute_past_a_near_tie_only(files, tmp_path) -> None:
    path = tmp_path / "auto.onnx"
    path.write_bytes(files["fused"].path.read_bytes())
    check = verify_choosing_level(lambda: _near_tie_check(0.05), path, ExportOptions(), True)
    assert check.tokens_agree and check.notes["accuracy_level"] == INT8_COMPUTE
    assert "near ties at tokens [1]" in check.notes["accuracy_choice"]
    assert _levels(path) == set()
    calls = []

    def verify():
        calls.append(1)
        return _near_tie_check(0.5) if len(calls) == 1 else _check([1, 2, 3], 1e-6)
    check = verify_choosing_level(verify, path, ExportOptions(), True)
    assert len(calls) == 2 and check.notes["accuracy_level"] == FLOAT_COMPUTE
    assert _levels(path) == {FLOAT_COMPUTE}


def test_fused_graph_feeds_attention_straight_from_the_matmul_and_fuses_residual_norms(
        files) -> None:
    """[1, T, hidden] throughout: nothing between the qkv MatMulNBits and
    GroupQueryAttention or between it and o_proj; each residual add + RMSNorm is one
    SkipSimplifiedLayerNormalization (2 per block, the final norm included)."""
    model = onnx.load(str(files["fused"].path))
    producer = {out: node for node in model.graph.node for out in node.output}
    layers = files["fused"].decoder.shape.layers
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * layers
    last_norm = len(ops) - 1 - ops[::-1].index("SkipSimplifiedLayerNormalization")
    blocks = ops[ops.index("MatMulNBits"):last_norm]
    assert "Unsqueeze" not in blocks and "Reshape" not in blocks
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            assert producer[node.input[0]].op_type == "MatMulNBits"
            assert producer[node.input[0]].input[0] in {
                n.output[0] for n in model.graph.node
                if n.op_type == "SkipSimplifiedLayerNormalization"} or node is next(
                n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    # the tied float head is a 2-D Gemm, so only it is reshaped, once
    assert ops[last_norm + 1:] == ["Reshape", "Gemm", "Unsqueeze"]
    assert producer["logits"].op_type == "Unsqueeze"
