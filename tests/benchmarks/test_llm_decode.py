"""The decode benchmark's bytes-per-token accounting on small exported files."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.llm_decode import PROMPT_TOKENS, onnx_bytes_per_token
from export.llm.decoder_weights import ModuleDecoderWeights
from export.onnx.decoder_graph import write_decoder_onnx
from models import create_model

onnx = pytest.importorskip("onnx")


def _write(tmp_path: Path, quantize: bool, external: bool, attention: str = "auto",
           model: str = "fake-llama"):
    from compress.quant.rtn import rtn_quantize

    weights = ModuleDecoderWeights(create_model(model).module, 128)
    if quantize:
        weights.quantize_tables(lambda w: rtn_quantize(w, 4, 16, symmetric=False))
    path = tmp_path / f"{model}-{'q' if quantize else 'f'}.onnx"
    write_decoder_onnx(weights, path, external=external, attention=attention)
    model = onnx.load(str(path))  # with its data: sizes counted independently here
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    return path, sizes, weights.shape


@pytest.mark.parametrize(("external", "attention"), [(False, "auto"), (True, "auto"),
                                                    (False, "standard")])
def test_a_tied_float_table_counts_because_the_head_reads_it(tmp_path, external, attention):
    path, sizes, shape = _write(tmp_path, quantize=False, external=external,
                                attention=attention)
    counted = onnx_bytes_per_token(path)
    # The fused attention reads the cache rows up to the step's position; the standard
    # graph reads its whole max-context cache.
    rows = PROMPT_TOKENS + 1 if attention == "auto" else shape.max_context
    assert rows < shape.max_context or attention == "standard"
    assert counted["cache"] == 2 * 4 * shape.layers * shape.kv_heads * rows * shape.head_dim
    assert counted["weights"] == sum(sizes.values())
    assert sizes["model.embed_tokens.weight"] > 0


def test_a_quantized_table_only_gathered_is_not_counted(tmp_path):
    """Untied (fake-mistral): the table's GatherBlockQuantized reads one row per token,
    so its bytes are left out; tied (fake-llama): the lookup reads the head's own codes
    (export.onnx.shared_table), which the head reads whole, so everything counts."""
    path, sizes, _ = _write(tmp_path, quantize=True, external=False, model="fake-mistral")
    counted = onnx_bytes_per_token(path)
    gathered = {n: s for n, s in sizes.items() if n.startswith("model.embed_tokens.")}
    assert gathered and "lm_head.B" in sizes  # the untied head has its own packed weight
    assert counted["weights"] == sum(sizes.values()) - sum(gathered.values())
    path, sizes, _ = _write(tmp_path, quantize=True, external=False)
    assert not any(n.startswith("model.embed_tokens.") for n in sizes)
    assert onnx_bytes_per_token(path)["weights"] == sum(sizes.values())
