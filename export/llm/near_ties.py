"""Where a runtime's greedy tokens leave PyTorch's, and whether each such place is a near
tie: a token PyTorch itself barely preferred.

A file that computes in int8 (MatMulNBits at accuracy_level 4, export.onnx.accuracy_choice)
moves every logit by a few percent. Where PyTorch's two best tokens lie closer than that,
which one wins is decided by rounding, not by the model: on SmolLM2-135M's verification
prompt PyTorch prefers ' The' to '\\n' after " Paris." by 0.07 in logit, and an int8 file
(logits moved by up to 0.75 there) picks '\\n'. From then on the free-running continuations
differ although the file agrees with PyTorch wherever PyTorch was decided.

So the comparison is teacher-forced: PyTorch scores the prompt followed by the runtime's
own tokens (one forward pass), and at every generated position PyTorch's choice is
compared with the runtime's. A disagreement is a near tie when

    logit_pytorch[pytorch's token] - logit_pytorch[runtime's token] < TIE_MARGIN

(both logits from PyTorch's row, so the test does not depend on the runtime's error).
TIE_MARGIN = 0.1 is a probability ratio of e^0.1 = 1.105 between the two tokens: PyTorch
gives them probabilities within about 10% of each other. Only a caller that accepts
compute-precision changes (int8 compute) counts near ties as agreement; a float file must
match exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

TIE_MARGIN = 0.1  # logits: PyTorch's preference below this is a near tie


@dataclasses.dataclass
class TokenAgreement:
    """Teacher-forced comparison of `runtime_tokens` with PyTorch's choices."""

    positions: int  # generated positions compared
    disagreements: list[int]  # positions where PyTorch's choice differs
    margins: list[float]  # PyTorch's preference for its own token there, in logits

    @property
    def near_ties(self) -> list[int]:
        return [p for p, m in zip(self.disagreements, self.margins, strict=True)
                if m < TIE_MARGIN]

    @property
    def only_near_ties(self) -> bool:
        """Every disagreement is a near tie (also true when there is none)."""
        return len(self.near_ties) == len(self.disagreements)

    def to_dict(self) -> dict:
        return {"teacher_forced_positions": self.positions,
                "teacher_forced_disagreements": self.disagreements,
                "pytorch_margins": [round(m, 4) for m in self.margins],
                "near_ties": self.near_ties, "tie_margin": TIE_MARGIN}


def teacher_forced_agreement(reference_rows: np.ndarray,
                             runtime_tokens: Sequence[int]) -> TokenAgreement:
    """`reference_rows` [n, vocab]: PyTorch's logits for the token after the prompt and
    after each of the first n - 1 runtime tokens (row i predicts runtime_tokens[i])."""
    rows = np.asarray(reference_rows, dtype=np.float64)
    if len(rows) != len(runtime_tokens):
        raise ValueError(f"{len(rows)} reference rows for {len(runtime_tokens)} tokens")
    disagreements, margins = [], []
    for position, (row, token) in enumerate(zip(rows, runtime_tokens, strict=True)):
        choice = int(row.argmax())
        if choice != int(token):
            disagreements.append(position)
            margins.append(float(row[choice] - row[int(token)]))
    return TokenAgreement(len(runtime_tokens), disagreements, margins)


def generated_rows(sequence_logits: np.ndarray, prompt_tokens: int,
                   new_tokens: int) -> np.ndarray:
    """The rows of logits over prompt + runtime_tokens[:-1] that predict the generated
    tokens: from the prompt's last position on."""
    start = prompt_tokens - 1
    return np.asarray(sequence_logits)[start:start + new_tokens]
