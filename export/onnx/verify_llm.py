"""Run an exported LLM with onnxruntime and compare it with the PyTorch model: the prefill
logits (error and cosine) and the greedy continuation (must be the same tokens)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from export.errors import require
from export.llm.greedy import greedy_tokens
from export.onnx.llm import INPUT_NAMES
from export.verify import OutputAgreement, agreement
from models.kv_cache import cache_kwargs, returned_cache


@dataclasses.dataclass
class LlmVerification:
    runtime: str
    logits: OutputAgreement
    pytorch_tokens: list[int]
    runtime_tokens: list[int]
    prompt_tokens: int
    seconds: float

    @property
    def tokens_match(self) -> bool:
        return self.pytorch_tokens == self.runtime_tokens

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "logits": self.logits.to_dict(),
                "tokens_match": self.tokens_match, "pytorch_tokens": self.pytorch_tokens,
                "runtime_tokens": self.runtime_tokens, "prompt_tokens": self.prompt_tokens,
                "seconds": self.seconds}


def onnx_step(path: Path, threads: int | None = None):
    ort = require("onnxruntime", "onnx", "running ONNX files")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(os.fspath(path), options,
                                   providers=["CPUExecutionProvider"])

    def step(ids, position, keys, values):
        return session.run(None, dict(zip(INPUT_NAMES, (ids, position, keys, values),
                                          strict=True)))
    return step


def torch_greedy(model: torch.nn.Module, prompt: Sequence[int],
                 new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens with the Hugging Face model's own cache, and its prompt logits."""
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        logits = out.logits[0].float().numpy()
        cache, tokens = returned_cache(out), [int(out.logits[0, -1].argmax())]
        while len(tokens) < new_tokens:
            out = model(input_ids=torch.tensor([[tokens[-1]]]), use_cache=True,
                        **cache_kwargs(model, cache))
            cache = returned_cache(out)
            tokens.append(int(out.logits[0, -1].argmax()))
    return tokens, logits


def verify_llm_onnx(path: Path, model: torch.nn.Module, prompt: Sequence[int],
                    new_tokens: int, cache_shape: Sequence[int],
                    max_context: int) -> LlmVerification:
    start = time.perf_counter()
    reference_tokens, reference_logits = torch_greedy(model, prompt, new_tokens)
    tokens, logits = greedy_tokens(onnx_step(path), prompt, new_tokens, cache_shape,
                                   max_context)
    return LlmVerification("onnxruntime", agreement("logits", logits, reference_logits),
                           reference_tokens, tokens, len(prompt),
                           time.perf_counter() - start)
