"""What verifying an exported LLM compares: PyTorch's own greedy tokens and prompt logits
(with the Hugging Face cache, so the re-authoring is checked too) against a runtime's."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from export.llm.near_ties import TokenAgreement, generated_rows, teacher_forced_agreement
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
    # PyTorch's choices teacher-forced on the runtime's tokens (export.llm.near_ties),
    # computed when the free-running tokens differ; near ties count as agreement only
    # where the exporter allows it (int8 compute).
    agreement: TokenAgreement | None = None
    allow_near_ties: bool = False

    @property
    def tokens_match(self) -> bool:
        return self.pytorch_tokens == self.runtime_tokens

    @property
    def tokens_agree(self) -> bool:
        """The tokens match, or (where allowed) differ only after a near tie."""
        if self.tokens_match:
            return True
        return (self.allow_near_ties and self.agreement is not None
                and self.agreement.only_near_ties)

    def to_dict(self) -> dict:
        data = {"runtime": self.runtime, "logits": self.logits.to_dict(),
                "tokens_match": self.tokens_match, "tokens_agree": self.tokens_agree,
                "pytorch_tokens": self.pytorch_tokens,
                "runtime_tokens": self.runtime_tokens, "prompt_tokens": self.prompt_tokens,
                "seconds": self.seconds, **self.notes}
        if self.agreement is not None:
            data["teacher_forced"] = self.agreement.to_dict()
        return data


def torch_agreement(model: torch.nn.Module, prompt: Sequence[int],
                    runtime_tokens: Sequence[int]) -> TokenAgreement:
    """PyTorch teacher-forced on prompt + runtime_tokens (one forward pass), compared
    with the runtime's tokens (export.llm.near_ties)."""
    sequence = list(prompt) + list(runtime_tokens[:-1])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sequence])).logits[0].float().numpy()
    return teacher_forced_agreement(generated_rows(logits, len(prompt), len(runtime_tokens)),
                                    runtime_tokens)


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


