"""Run an exported LLM with onnxruntime and compare it with the PyTorch model: the prefill
logits (error and cosine) and the greedy continuation (must be the same tokens). A model
too large to hold is compared with PyTorch read one part at a time
(export.llm.streamed_reference), after onnxruntime has finished and freed its copy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from export.llm.check import LlmVerification, torch_agreement, torch_greedy
from export.llm.greedy import greedy_tokens
from export.onnx.llm_session import onnx_step
from export.verify import agreement


def verify_llm_onnx(path: Path, model: torch.nn.Module, prompt: Sequence[int],
                    new_tokens: int, cache_shape: Sequence[int],
                    max_context: int) -> LlmVerification:
    start = time.perf_counter()
    reference_tokens, reference_logits = torch_greedy(model, prompt, new_tokens)
    tokens, logits = greedy_tokens(onnx_step(path), prompt, new_tokens, cache_shape,
                                   max_context)
    forced = (torch_agreement(model, prompt, tokens) if tokens != reference_tokens
              else None)
    return LlmVerification("onnxruntime", agreement("logits", logits, reference_logits),
                           reference_tokens, tokens, len(prompt),
                           time.perf_counter() - start, agreement=forced)


def verify_streamed_llm_onnx(path: Path, lazy, prompt: Sequence[int], new_tokens: int,
                             cache_shape: Sequence[int], max_context: int,
                             tables=None) -> LlmVerification:
    """As verify_llm_onnx, with the reference read lazily from `lazy` (LazyCheckpoint);
    `tables` (export.llm.table_quant.QuantizedTables) replace what was quantized at
    export."""
    from export.llm.near_ties import teacher_forced_agreement
    from export.llm.streamed_reference import teacher_forced_rows

    start = time.perf_counter()
    step = onnx_step(path)
    tokens, logits = greedy_tokens(step, prompt, new_tokens, cache_shape, max_context)
    del step  # the session's weights go before the reference reads its own
    reference_logits, rows = teacher_forced_rows(lazy, prompt, tokens, tables)
    # PyTorch's choice after each prefix of the runtime's own tokens (so the comparison
    # is teacher-forced already; see export.llm.streamed_reference)
    reference_tokens = [int(row.argmax()) for row in rows]
    forced = (teacher_forced_agreement(rows, tokens) if tokens != reference_tokens
              else None)
    return LlmVerification("onnxruntime", agreement("logits", logits, reference_logits),
                           reference_tokens, tokens, len(prompt),
                           time.perf_counter() - start, agreement=forced)
