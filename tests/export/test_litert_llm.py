"""LLM export to LiteRT on the fake Llama: two signatures over one set of weights, run by
ai-edge-litert in a child process; chunked, padded prefill gives PyTorch's tokens."""

from __future__ import annotations

import pytest

from export.litert.llm import export_llm_litert
from export.litert.verify_llm import litert_greedy, verify_llm_litert
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
