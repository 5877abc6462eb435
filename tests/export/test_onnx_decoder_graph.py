"""The ONNX decoder written node by node from a lazily read checkpoint
(export.onnx.decoder_graph): it computes what the Hugging Face model computes, carries an
artifact's packed weights exactly as the traced exporter does, keeps its weights out of
the graph message, and its streamed PyTorch reference equals the in-memory model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.errors import ExportError
from export.llm.check import torch_greedy
from export.llm.greedy import greedy_tokens
from export.llm.lazy_weights import LazyDecoderWeights
from export.llm.streamed_reference import streamed_logits, teacher_forced_greedy
from export.onnx.decoder_graph import write_decoder_onnx
from export.onnx.external_data import MAP_ALIGNMENT, MAP_FROM_BYTES
from export.onnx.verify_llm import onnx_step
from models import create_model
from models.family import family_of_module
from models.lazy.open import open_lazy
from tests.export.test_onnx_llm import _compressed_fake, _export

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONTEXT = 48
PROMPT = [40, 41, 72, 101, 108, 108, 111]


def _save(loaded, folder: Path) -> Path:
    family_of_module(loaded.module).write(folder, loaded, {})
    return folder


def _lazy_export(folder: Path, context: int = CONTEXT):
    weights = LazyDecoderWeights(open_lazy(str(folder)), context)
    return write_decoder_onnx(weights, folder / "lazy.onnx")


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", ["fake-llama", "fake-mistral", "fake-qwen2"])
def test_lazily_written_decoder_equals_the_hf_model(name: str, tmp_path: Path) -> None:
    """Greedy tokens and prompt logits against the Hugging Face model's own cached
    generation (an independent implementation: HF attention, masks and rotary)."""
    loaded = create_model(name)
    result = _lazy_export(_save(loaded, tmp_path))
    tokens, logits = greedy_tokens(onnx_step(result.path), PROMPT, 10,
                                   result.decoder.shape.cache_shape(), CONTEXT)
    reference_tokens, reference_logits = torch_greedy(loaded.module, PROMPT, 10)
    assert tokens == reference_tokens
    assert _relative(logits, reference_logits) < 1e-5
    assert result.carried == [] and result.dropped == []


def test_packed_artifact_carries_what_the_traced_exporter_carries(tmp_path: Path) -> None:
    """A mix of 4-bit, 3-bit (stored in 4) and palettized linears read from the artifact's
    files: the same per-layer forms as export.onnx.llm from memory, the same logits."""
    module, packed = _compressed_fake()
    loaded = create_model("fake-llama")
    loaded.module, loaded.quantized = module, packed
    folder = _save(loaded, tmp_path / "artifact")
    lazy = _lazy_export(folder)
    traced = _export(module, tmp_path / "traced.onnx", packed)
    assert sorted((r.name, r.carried_as) for r in lazy.carried) == sorted(
        (r.name, r.carried_as) for r in traced.carried)
    assert len(lazy.carried) == 14 and lazy.dropped == []
    shape = lazy.decoder.shape.cache_shape()
    ours = greedy_tokens(onnx_step(lazy.path), PROMPT, 8, shape, CONTEXT)
    theirs = greedy_tokens(onnx_step(traced.path), PROMPT, 8, shape, CONTEXT)
    assert ours[0] == theirs[0]
    assert _relative(ours[1], theirs[1]) < 1e-5


def test_weights_live_in_the_data_file_aligned_for_memory_mapping(tmp_path: Path) -> None:
    result = _lazy_export(_save(create_model("fake-llama"), tmp_path))
    data = result.path.with_name(result.path.name + ".data")
    graph_only = onnx.load(str(result.path), load_external_data=False)
    externals = [t for t in graph_only.graph.initializer
                 if t.data_location == onnx.TensorProto.EXTERNAL]
    assert externals and graph_only.ByteSize() < data.stat().st_size / 10
    end = 0
    for tensor in externals:
        where = {e.key: e.value for e in tensor.external_data}
        offset, length = int(where["offset"]), int(where["length"])
        assert where["location"] == data.name and offset >= end  # appended, never overlapping
        if length >= MAP_FROM_BYTES:
            assert offset % MAP_ALIGNMENT == 0
        end = offset + length
    assert end == data.stat().st_size
    # The file's bytes are the checkpoint's: the embedding read back equals the model's.
    full = onnx.load(str(result.path))
    tables = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    embedding = create_model("fake-llama").module.get_input_embeddings().weight
    np.testing.assert_array_equal(tables["model.embed_tokens.weight"],
                                  embedding.detach().numpy())


def test_streamed_reference_equals_the_in_memory_model(tmp_path: Path) -> None:
    loaded = create_model("fake-qwen2")
    lazy = open_lazy(str(_save(loaded, tmp_path)))
    tokens = PROMPT + [5, 9, 200]
    with torch.no_grad():
        expected = loaded.module(input_ids=torch.tensor([tokens])).logits[0].numpy()
    np.testing.assert_array_equal(streamed_logits(lazy, tokens), expected)
    # Teacher forcing on PyTorch's own greedy tokens gives those tokens back.
    greedy, _ = torch_greedy(loaded.module, PROMPT, 6)
    forced, prompt_logits = teacher_forced_greedy(lazy, PROMPT, greedy)
    assert forced == greedy and prompt_logits.shape[0] == len(PROMPT)
    # ... and names the first token a runtime got wrong.
    wrong = [*greedy[:3], (greedy[3] + 1) % 256, *greedy[4:]]
    forced, _ = teacher_forced_greedy(lazy, PROMPT, wrong)
    assert forced[:4] == greedy[:4] and forced[3] != wrong[3]


def test_parameters_are_back_on_meta_after_the_reference(tmp_path: Path) -> None:
    lazy = open_lazy(str(_save(create_model("fake-llama"), tmp_path)))
    weights = LazyDecoderWeights(lazy, CONTEXT)
    streamed_logits(lazy, PROMPT)
    assert all(p.device.type == "meta" for p in weights.skeleton.model.parameters())


def test_context_beyond_the_model_is_refused(tmp_path: Path) -> None:
    lazy = open_lazy(str(_save(create_model("fake-llama"), tmp_path)))
    with pytest.raises(ExportError, match="exceeds the model's max_position_embeddings"):
        LazyDecoderWeights(lazy, 1 << 20)


def test_gemma_is_refused_like_the_traced_exporter(tmp_path: Path) -> None:
    lazy = open_lazy(str(_save(create_model("fake-gemma"), tmp_path)))
    with pytest.raises(ExportError, match=r"gemma models use \(1 \+ w\) RMSNorm"):
        LazyDecoderWeights(lazy, CONTEXT)


# --- the embedding table and head quantized at export (--embedding-bits) -----------------


def _rtn(bits: int, group: int = 16):
    from compress.quant.rtn import rtn_quantize

    return lambda weight: rtn_quantize(weight, bits, group, symmetric=False)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("name", ["fake-llama", "fake-mistral"])
def test_quantized_table_and_head_equal_their_dequantized_values(name: str, bits: int,
                                                                  tmp_path: Path) -> None:
    """The table lookup (GatherBlockQuantized; a tied table: the rows of the head's own
    MatMulNBits tensors, export.onnx.shared_table) and the MatMulNBits head compute with
    exactly the values the reference swaps in (rows dequantized independently here)."""
    from export.llm.decoder_weights import ModuleDecoderWeights

    loaded = create_model(name)
    weights = ModuleDecoderWeights(loaded.module, CONTEXT)
    tables = weights.quantize_tables(_rtn(bits))
    result = write_decoder_onnx(weights, tmp_path / "q.onnx", external=False)
    carried = {r.name: r.carried_as for r in result.carried}
    if weights.tied:  # one copy of the codes: the lookup reads the head's MatMulNBits rows
        assert carried["model.embed_tokens"] == (f"rows of the head's MatMulNBits {bits}-bit,"
                                                 " block 16 (quantized at export)")
        assert carried[weights.head_module] == (f"MatMulNBits {bits}-bit, block 16 (quantized"
                                                " at export, shared with the table)")
        codes_bytes = weights.shape.vocab * weights.embedding_shape()[1] * bits // 8
        graph = onnx.load(str(result.path)).graph
        sizes = [onnx.numpy_helper.to_array(i).nbytes for i in graph.initializer]
        assert sizes.count(codes_bytes) == 1
        assert "GatherBlockQuantized" not in {n.op_type for n in graph.node}
    else:
        assert carried["model.embed_tokens"] == (f"GatherBlockQuantized {bits}-bit, block 16 "
                                                 "(quantized at export)")
        assert carried[weights.head_module] == (f"MatMulNBits {bits}-bit, block 16 (quantized"
                                                " at export)")
    assert set(tables.by_name) == ({"model.embed_tokens.weight"} if weights.tied else
                                   {"model.embed_tokens.weight", "lm_head.weight"})
    table = loaded.module.get_input_embeddings().weight.detach()
    packed = tables.by_name["model.embed_tokens.weight"]
    expected = (packed.scales.float().repeat_interleave(16, 1)
                * (packed.codes.float() - packed.zeros.float().repeat_interleave(16, 1)))
    assert float((expected - table).abs().max()) <= float(packed.scales.float().max())
    tokens, logits = greedy_tokens(onnx_step(result.path), PROMPT, 8,
                                   result.decoder.shape.cache_shape(), CONTEXT)
    with tables.swapped_into(loaded.module):
        torch.testing.assert_close(loaded.module.get_input_embeddings().weight, expected)
        reference_tokens, reference_logits = torch_greedy(loaded.module, PROMPT, 8)
    assert torch.equal(loaded.module.get_input_embeddings().weight, table)  # restored
    assert tokens == reference_tokens
    assert _relative(logits, reference_logits) < 1e-5


def test_streamed_reference_uses_the_quantized_tables(tmp_path: Path) -> None:
    loaded = create_model("fake-mistral")
    lazy = open_lazy(str(_save(loaded, tmp_path)))
    tables = LazyDecoderWeights(lazy, CONTEXT).quantize_tables(_rtn(4))
    with tables.swapped_into(loaded.module), torch.no_grad():
        expected = loaded.module(input_ids=torch.tensor([PROMPT])).logits[0].numpy()
    np.testing.assert_allclose(streamed_logits(lazy, PROMPT, tables), expected,
                               rtol=0, atol=1e-6)


def test_accuracy_level_is_set_on_every_matmulnbits(tmp_path: Path) -> None:
    from export.llm.decoder_weights import ModuleDecoderWeights

    module, packed = _compressed_fake()
    weights = ModuleDecoderWeights(module, CONTEXT, packed)
    weights.quantize_tables(_rtn(4))
    result = write_decoder_onnx(weights, tmp_path / "a.onnx", external=False,
                                accuracy_level=4)
    nodes = [n for n in onnx.load(str(result.path)).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 2 * 4 + 1  # q, k, v, o of both blocks (MLPs are palettes), head
    for node in nodes:
        levels = [a.i for a in node.attribute if a.name == "accuracy_level"]
        assert levels == [4]
