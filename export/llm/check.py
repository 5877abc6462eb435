"""What verifying an exported LLM compares: PyTorch's own greedy tokens and prompt logits
(with the Hugging Face cache, so the re-authoring is checked too) against a runtime's."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from export.verify import OutputAgreement
from models.kv_cache import cache_kwargs, returned_cache


@dataclasses.dataclass
class LlmVerification:
    runtime: str
    logits: OutputAgreement
    pytorch_tokens: list[int]
    runtime_tokens: list[int]
    prompt_tokens: int
    seconds: float
    # The exporter's own tolerance for this file when the user gave none (e.g. int8
    # activations, export.onnx.accuracy_choice), and what it chose, for the report.
    rtol: float | None = None
    notes: dict = dataclasses.field(default_factory=dict)

    @property
    def tokens_match(self) -> bool:
        return self.pytorch_tokens == self.runtime_tokens

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "logits": self.logits.to_dict(),
                "tokens_match": self.tokens_match, "pytorch_tokens": self.pytorch_tokens,
                "runtime_tokens": self.runtime_tokens, "prompt_tokens": self.prompt_tokens,
                "seconds": self.seconds, **self.notes}


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


