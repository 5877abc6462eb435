"""Verify a .tflite LLM against PyTorch, with the interpreter in a child process.

The reference computes with the values the file holds (`reference`: tables quantized at
export, mapped palettes swapped into the model), so passing means the file is exact. When
palettes were mapped, the file is also compared with the artifact's own palette weights
(`palettes`), and that logit error is the mapping's cost, reported beside the check."""

from __future__ import annotations

import contextlib
import dataclasses
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
from export.llm.table_quant import QuantizedTables
from export.verify import OutputAgreement, agreement

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


@dataclasses.dataclass
class MappedVerification(LlmVerification):
    """The check against the file's own values, plus the file against the artifact."""

    artifact_logits: OutputAgreement | None = None
    artifact_tokens: list[int] | None = None

    def to_dict(self) -> dict:
        data = super().to_dict()
        if self.artifact_logits is not None:
            data["vs_artifact"] = {"logits": self.artifact_logits.to_dict(),
                                   "tokens_match": self.artifact_tokens == self.runtime_tokens,
                                   "artifact_tokens": self.artifact_tokens}
        return data


def verify_llm_litert(path: Path, model: torch.nn.Module, prompt: Sequence[int],
                      new_tokens: int, max_context: int,
                      reference: QuantizedTables | None = None,
                      palettes: QuantizedTables | None = None) -> LlmVerification:
    start = time.perf_counter()
    with _swapped(model, reference):
        reference_tokens, reference_logits = torch_greedy(model, prompt, new_tokens)
    tokens, logits = litert_greedy(path, prompt, new_tokens, max_context)
    check = MappedVerification("ai-edge-litert", agreement("logits", logits, reference_logits),
                               reference_tokens, tokens, len(prompt),
                               time.perf_counter() - start)
    if palettes is not None and palettes.by_name:
        # The artifact: its palettes, with the rest of the reference (tables) as exported.
        kept = {name: packed for name, packed in (reference or QuantizedTables({})).by_name
                .items() if name not in palettes.by_name}
        with _swapped(model, QuantizedTables({**kept, **palettes.by_name})):
            artifact_tokens, artifact_logits = torch_greedy(model, prompt, new_tokens)
        check.artifact_logits = agreement("logits", logits, artifact_logits)
        check.artifact_tokens = artifact_tokens
        check.seconds = time.perf_counter() - start
    return check


def _swapped(model: torch.nn.Module, tables: QuantizedTables | None):
    return tables.swapped_into(model) if tables and tables.by_name else contextlib.nullcontext()
