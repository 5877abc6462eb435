"""Verify a .tflite LLM against PyTorch, with the interpreter in a child process."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from export.errors import ExportError
from export.litert.run_model import child_path
from export.llm.check import LlmVerification, torch_greedy
from export.verify import agreement

CHILD_TIMEOUT_S = 1800


def litert_greedy(path: Path, prompt: Sequence[int], new_tokens: int,
                  max_context: int) -> tuple[list[int], np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.npz"
        child = subprocess.run(
            [sys.executable, "-m", "export.litert.run_llm", child_path(path),
             "--prompt", ",".join(map(str, prompt)), "--new-tokens", str(new_tokens),
             "--max-context", str(max_context), "--out", child_path(result)],
            capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
            cwd=Path(__file__).resolve().parents[2])
        if child.returncode != 0:
            last = (child.stderr.strip().splitlines() or ["no message"])[-1][:300]
            raise ExportError(f"the LiteRT interpreter failed on {path.name} (exit code "
                              f"{child.returncode}): {last}")
        data = np.load(result)
        return [int(t) for t in data["tokens"]], data["logits"]


def verify_llm_litert(path: Path, model: torch.nn.Module, prompt: Sequence[int],
                      new_tokens: int, max_context: int) -> LlmVerification:
    start = time.perf_counter()
    reference_tokens, reference_logits = torch_greedy(model, prompt, new_tokens)
    tokens, logits = litert_greedy(path, prompt, new_tokens, max_context)
    return LlmVerification("ai-edge-litert", agreement("logits", logits, reference_logits),
                           reference_tokens, tokens, len(prompt), time.perf_counter() - start)
