"""LoRA adapters in the chunked LiteRT export (`toolkit export tflite --chunks N`, in
memory and streamed): each adapted linear gets the float side branch s (x A^T) B^T beside
its int4 blockwise FC (4-bit codes in groups of 32) or its DEQUANTIZE (2-bit codes in
groups of 16), the report says "lora adapters (float side branch)", and the verification
runs the chunks against PyTorch WITH the adapters: with large random adapters a file that
dropped them, or a reference without them, could not pass."""

from __future__ import annotations

import json

import pytest

from tests.toolkit.test_cli import SMALL
from tests.toolkit.test_lora_cli import _with_large_adapters, adapter_effect

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

LORA = ["--recover", "lora", "--recover-steps", "4", "--lora-rank", "4"]
BLOCKWISE = "FULLY_CONNECTED int4 blockwise 32, dynamic int8 input"


@pytest.fixture(scope="module")
def adapted(toolkit_cli, fake_model_dir, tmp_path_factory):
    """{bits: a large-adapter copy of an RTN + LoRA artifact}: 4-bit g32 (int4 blockwise
    FCs) and 2-bit g16 (DEQUANTIZE: a group of 16 is no XNNPACK block)."""
    made = {}
    for bits, group in ((4, 32), (2, 16)):
        folder = tmp_path_factory.mktemp(f"lora-rtn{bits}")
        out = folder / "artifact"
        result = toolkit_cli("compress", "--model", fake_model_dir, "--method", "rtn",
                             "--bits", str(bits), "--option", f"group_size={group}", *LORA,
                             "--out", out, *SMALL)
        assert result.code == 0, result.err
        made[bits] = _with_large_adapters(out, folder)
    return made


@pytest.mark.parametrize("engine", ["memory", "streaming"])
@pytest.mark.parametrize("bits", [4, 2])
def test_chunks_carry_the_adapters_and_verify_with_them(adapted, toolkit_cli, tmp_path,
                                                        engine, bits):
    report = tmp_path / "export.json"
    result = toolkit_cli("export", "tflite", "--model", adapted[bits], "--out",
                         tmp_path / "m.tflite", "--chunks", "2", "--engine", engine,
                         "--max-context", "32", "--prefill-tokens", "8", "--new-tokens", "6",
                         "--json", report, "--quiet")
    assert result.code == 0, result.err
    data = json.loads(report.read_text(encoding="utf-8"))
    assert sorted(p.name for p in tmp_path.glob("m_chunk*")) == ["m_chunk1.tflite",
                                                                 "m_chunk2.tflite"]
    assert data["verdict"] == "passed" and "verified_against" not in data
    assert data["carried"]["lora adapters (float side branch)"] == 14
    assert not any(row["layer"] == "lora adapters" for row in data["dropped"])
    if bits == 4:
        assert data["carried"][BLOCKWISE] == 14
    verification = data["verification"]
    assert verification["passed"] and verification["tokens_agree"]
    # The adapters move the logits far more than the file's error: it carries them.
    assert adapter_effect(adapted[bits]) > 20 * verification["logits"]["max_abs_error"]
    # ... and the stored model (with its adapters) is what the file is compared with too
    assert verification["vs_artifact"]["logits"]["relative_error"] < 0.1
