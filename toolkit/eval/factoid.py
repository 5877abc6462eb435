"""Factoid QA, closed book and open book, after LLM-KICK (Jaiswal et al., arXiv 2310.01382).

Closed book asks the question alone and measures knowledge stored in the weights:

    correct_i = [ some accepted answer of q_i appears, as a whole word, in the first line
                  of the greedy continuation of  FEW_SHOT + "Q: q_i\\nA:" ]

Open book puts a short passage in the prompt, the fact plus two distractor facts of the
same section in an order shuffled with a fixed seed, and measures retrieval from context:

    correct_i = [ normalize(first answer) == normalize(some accepted answer) ]

(first answer: up to the first newline or period). Accuracy is mean(correct_i). The
few-shot examples (Mongolia, Switzerland's franc, Boise) are outside the question set, so
a model only copies their format: a short answer on one line.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

import torch
from torch import nn

from toolkit.data.analogy_questions import FactoidQuestion
from toolkit.eval.answers import answer_line, contains_answer, exact_match, first_answer
from toolkit.eval.generate import greedy_answers

DISTRACTORS = 2


@dataclasses.dataclass(frozen=True)
class FewShotExample:
    question: str
    answer: str
    passage: str  # the open-book context: the fact among two others


FEW_SHOT = (
    FewShotExample("What is the capital of Mongolia?", "Ulaanbaatar",
                   "The capital of Nauru is Yaren. The capital of Mongolia is Ulaanbaatar. "
                   "The currency of Mongolia is the tugrik."),
    FewShotExample("What is the currency of Switzerland?", "franc",
                   "Boise is a city in Idaho. The currency of Switzerland is the franc. "
                   "The capital of Mongolia is Ulaanbaatar."),
    FewShotExample("In which US state is Boise?", "Idaho",
                   "The currency of Switzerland is the franc. The capital of Nauru is Yaren. "
                   "Boise is a city in Idaho."),
)


def closed_book_parts(question: FactoidQuestion) -> tuple[str, str]:
    """(few-shot prefix shared by every question, this question's part)."""
    shots = "".join(f"Q: {ex.question}\nA: {ex.answer}\n\n" for ex in FEW_SHOT)
    return shots, f"Q: {question.question}\nA:"


def open_book_parts(question: FactoidQuestion, passage: str) -> tuple[str, str]:
    shots = "".join(f"Context: {ex.passage}\nQ: {ex.question}\nA: {ex.answer}\n\n"
                    for ex in FEW_SHOT)
    return shots, f"Context: {passage}\nQ: {question.question}\nA:"


def closed_book_prompt(question: FactoidQuestion) -> str:
    return "".join(closed_book_parts(question))


def open_book_prompt(question: FactoidQuestion, passage: str) -> str:
    return "".join(open_book_parts(question, passage))


def open_book_passage(question: FactoidQuestion, pool: Sequence[FactoidQuestion],
                      seed: int) -> str:
    """The question's fact and `DISTRACTORS` facts of its section from `pool` (other
    subjects, answers that are not accepted for this question), shuffled. The generator is
    seeded with (seed, question id), so a passage does not depend on which other
    questions are asked."""
    rng = random.Random(f"{seed}:{question.id}")
    accepted = {a.casefold() for a in question.accepted}
    candidates = [q for q in pool if q.section == question.section
                  and q.subject != question.subject
                  and not accepted & {g.casefold() for g in q.golds}]
    facts = [q.fact() for q in rng.sample(candidates, min(DISTRACTORS, len(candidates)))]
    facts.append(question.fact())
    rng.shuffle(facts)
    return " ".join(facts)


@dataclasses.dataclass
class FactoidOutcome:
    """Per-question outcome of one mode: what the model said and whether it counts."""

    mode: str  # "closed_book" or "open_book"
    items: list[dict]  # {"id", "section", "answer", "correct"}

    @property
    def correct(self) -> int:
        return sum(item["correct"] for item in self.items)

    def by_section(self) -> dict[str, dict[str, int]]:
        sections: dict[str, dict[str, int]] = {}
        for item in self.items:
            counts = sections.setdefault(item["section"], {"correct": 0, "n": 0})
            counts["correct"] += int(item["correct"])
            counts["n"] += 1
        return sections


def run_factoid(model: nn.Module, tokenizer, questions: Sequence[FactoidQuestion], *,
                mode: str, pool: Sequence[FactoidQuestion] = (), seed: int = 0,
                max_new_tokens: int = 10, batch_size: int = 8,
                device: str | torch.device = "cpu",
                progress: Callable[[int, int], None] | None = None) -> FactoidOutcome:
    """Ask `questions` greedily in `mode` ("closed_book" or "open_book") and score them.

    `pool` supplies open-book distractors (the full question list, so that passages do not
    change with a subsample)."""
    if mode == "closed_book":
        parts = [closed_book_parts(q) for q in questions]
    elif mode == "open_book":
        pool = pool or questions
        parts = [open_book_parts(q, open_book_passage(q, pool, seed)) for q in questions]
    else:
        raise ValueError(f"unknown factoid mode {mode!r}")
    prefix = parts[0][0] if parts else ""
    answers = greedy_answers(model, tokenizer, [part for _, part in parts], prefix=prefix,
                             max_new_tokens=max_new_tokens, batch_size=batch_size,
                             device=device, progress=progress)
    items = []
    for question, answer in zip(questions, answers, strict=True):
        if mode == "closed_book":
            shown, correct = answer_line(answer), contains_answer(answer_line(answer),
                                                                  question.accepted)
        else:
            shown, correct = first_answer(answer), exact_match(answer, question.accepted)
        items.append({"id": question.id, "section": question.section, "answer": shown,
                      "correct": bool(correct)})
    return FactoidOutcome(mode, items)
