"""MMLU multiple choice by log-likelihood of the answer letter (Hendrycks et al.,
arXiv 2009.03300; the zero-shot format of lm_eval's `mmlu` task):

    prompt_i = "The following is a multiple choice question about <subject>.\\n\\n<question>
                \\nA. <choice>\\nB. ...\\nD. <choice>\\nAnswer:"
    predicted_i = argmax_{c in A..D} log p(" c" | prompt_i),  correct_i = [predicted_i = gold_i]

The letters' tokens are encoded on their own. Tokens that all four continuations start with
(a byte-level tokenizer's space) are appended to the prompt: they add the same term to
every choice and do not change the argmax. When each remainder is one token, as for BPE
vocabularies, one forward pass scores all four choices; otherwise the four full
sequences are scored in one batch. Chance accuracy is 1/4.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.data.mmlu_dev import LETTERS, MmluQuestion
from toolkit.eval.generate import encode_prompt, last_logits_kwargs

CHANCE = 1 / len(LETTERS)


def mmlu_prompt(question: MmluQuestion) -> str:
    subject = question.subject.replace("_", " ")
    choices = "".join(f"\n{letter}. {choice}"
                      for letter, choice in zip(LETTERS, question.choices, strict=True))
    return (f"The following is a multiple choice question about {subject}.\n\n"
            f"{question.question}{choices}\nAnswer:")


def _common_prefix(sequences: Sequence[list[int]]) -> list[int]:
    prefix: list[int] = []
    for column in zip(*sequences, strict=False):
        if any(token != column[0] for token in column):
            break
        prefix.append(column[0])
    return prefix[: min(len(s) for s in sequences) - 1]  # leave every choice a token


@torch.no_grad()
def choice_log_likelihoods(model: nn.Module, prompt_ids: list[int],
                           continuations: Sequence[list[int]],
                           device: torch.device) -> list[float]:
    """log p(continuation | prompt) for each continuation, up to a term shared by all."""
    shared = _common_prefix(continuations)
    context = prompt_ids + shared
    rests = [c[len(shared):] for c in continuations]
    if all(len(rest) == 1 for rest in rests):
        ids = torch.tensor([context], dtype=torch.long, device=device)
        logits = model(input_ids=ids, use_cache=False, **last_logits_kwargs(model)).logits
        log_probs = F.log_softmax(logits[0, -1].float(), dim=-1)
        return [float(log_probs[rest[0]]) for rest in rests]
    length = len(context) + max(len(rest) for rest in rests)
    ids = torch.zeros((len(rests), length), dtype=torch.long)  # right padding: never read
    for row, rest in enumerate(rests):
        ids[row, : len(context) + len(rest)] = torch.tensor(context + rest)
    log_probs = F.log_softmax(model(input_ids=ids.to(device), use_cache=False).logits.float(),
                              dim=-1)
    scores = []
    for row, rest in enumerate(rests):
        positions = torch.arange(len(context) - 1, len(context) - 1 + len(rest), device=device)
        targets = torch.tensor(rest, device=device)
        scores.append(float(log_probs[row, positions, targets].sum(dtype=torch.float64)))
    return scores


@dataclasses.dataclass
class MmluOutcome:
    items: list[dict]  # {"id", "subject", "predicted", "answer", "correct"}

    @property
    def correct(self) -> int:
        return sum(item["correct"] for item in self.items)


def run_mmlu(model: nn.Module, tokenizer, questions: Sequence[MmluQuestion], *,
             device: str | torch.device = "cpu",
             progress: Callable[[int, int], None] | None = None) -> MmluOutcome:
    """Score each question by the most likely answer letter."""
    device = torch.device(device)
    continuations = [encode_prompt(tokenizer, f" {letter}") for letter in LETTERS]
    model.eval()
    items = []
    for done, question in enumerate(questions, 1):
        scores = choice_log_likelihoods(model, encode_prompt(tokenizer, mmlu_prompt(question)),
                                        continuations, device)
        predicted = max(range(len(scores)), key=lambda i: (scores[i], -i))
        items.append({"id": question.id, "subject": question.subject,
                      "predicted": LETTERS[predicted], "answer": LETTERS[question.answer],
                      "correct": predicted == question.answer})
        if progress:
            progress(done, len(questions))
    return MmluOutcome(items)
