"""MMLU dev questions from the chain-of-thought prompts bundled with lm_eval.

MMLU (Hendrycks et al., arXiv 2009.03300) keeps 5 "dev" questions per subject for few-shot
prompts. lm_eval==0.4.13 ships them, with worked answers, as
`lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json`: {subject: prompt}, each prompt a
header line then blocks

    Q: <question>
    (A) <choice> (B) <choice> (C) <choice> (D) <choice>
    A: Let's think step by step. ... The answer is (C).

The file is located through lm_eval's import spec without importing lm_eval (slow, and its
dependencies are not installed). A block parses cleanly when it has exactly four choices on
one line and exactly one "The answer is (X)"; the rest (choices on several lines, five
choices, truncated reasoning: 9 of 282 blocks, all of elementary_mathematics among them)
are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

from toolkit.errors import UserError

PROMPTS_PATH = ("tasks", "mmlu", "flan_cot_fewshot", "_cot_prompts.json")
LETTERS = ("A", "B", "C", "D")
_FIX = "install lm_eval==0.4.13 from PyPI (pip install --no-deps lm_eval==0.4.13)"

_BLOCK_START = re.compile(r"(?:^|\n\n)Q: ")
_BLOCK = re.compile(r"(?s)^(?P<question>.+?)\n\(A\) (?P<a>[^\n]+?) \(B\) (?P<b>[^\n]+?) "
                    r"\(C\) (?P<c>[^\n]+?) \(D\) (?P<d>[^\n]+?)\nA: (?P<reasoning>.*)$")
_ANSWER = re.compile(r"The answer is \(([A-Z])\)")
_CHOICE_MARK = re.compile(r"\([A-Z]\) ")  # a fifth choice left inside the fourth


@dataclasses.dataclass(frozen=True)
class MmluQuestion:
    subject: str  # "abstract_algebra"
    index: int  # position of the block in the subject's prompt (0-4)
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index into choices

    @property
    def id(self) -> str:
        return f"{self.subject}:{self.index}"


@dataclasses.dataclass(frozen=True)
class MmluDev:
    questions: list[MmluQuestion]
    blocks: int  # question blocks found
    skipped: int  # blocks that did not parse cleanly
    source: str


def mmlu_prompts_file() -> Path:
    """Path of lm_eval's `_cot_prompts.json`; UserError if lm_eval or the file is missing."""
    spec = importlib.util.find_spec("lm_eval")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise UserError(f"lm_eval is not installed, so its MMLU dev prompts are missing; {_FIX}")
    path = Path(locations[0]).joinpath(*PROMPTS_PATH)
    if not path.is_file():
        raise UserError(f"lm_eval's MMLU dev prompts are missing ({path}); {_FIX}")
    return path


def parse_block(subject: str, index: int, block: str) -> MmluQuestion | None:
    """One `Q: ...` block (without its "Q: ") as a question, or None if it is malformed."""
    match = _BLOCK.match(block.strip())
    if match is None:
        return None
    answers = _ANSWER.findall(match["reasoning"])
    choices = tuple(match[k].strip() for k in "abcd")
    question = match["question"].strip()
    if (len(answers) != 1 or answers[0] not in LETTERS or not question
            or any(not c or _CHOICE_MARK.search(c) for c in choices)):
        return None
    return MmluQuestion(subject, index, question, choices, LETTERS.index(answers[0]))


def parse_mmlu_prompts(prompts: dict[str, str]) -> tuple[list[MmluQuestion], int, int]:
    """(clean questions in subject order, blocks found, blocks skipped)."""
    questions: list[MmluQuestion] = []
    blocks = 0
    for subject, text in prompts.items():
        for index, block in enumerate(_BLOCK_START.split(text)[1:]):
            blocks += 1
            parsed = parse_block(subject, index, block)
            if parsed is not None:
                questions.append(parsed)
    return questions, blocks, blocks - len(questions)


def load_mmlu_dev(path: Path | None = None) -> MmluDev:
    path = path or mmlu_prompts_file()
    try:
        prompts = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not valid JSON; reinstall: {_FIX}") from None
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise UserError(f"{path} is not a {{subject: prompt}} mapping; reinstall: {_FIX}")
    questions, blocks, skipped = parse_mmlu_prompts(prompts)
    return MmluDev(questions, blocks, skipped, str(path))
