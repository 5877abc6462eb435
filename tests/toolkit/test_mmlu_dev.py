"""MMLU dev questions parsed from lm_eval's bundled chain-of-thought prompts."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from toolkit.data import mmlu_dev
from toolkit.data.mmlu_dev import LETTERS, load_mmlu_dev, parse_block, parse_mmlu_prompts
from toolkit.errors import UserError


@pytest.fixture(scope="module")
def dev():
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm_eval is not installed (pip install --no-deps lm_eval==0.4.13)")
    return load_mmlu_dev()


def test_parses_about_273_of_282_questions(dev):
    assert dev.blocks == 282  # 57 subjects, about 5 each
    assert len(dev.questions) == 273 and dev.skipped == 9
    # 57 subjects; elementary_mathematics lists its choices one per line and drops out.
    assert len({q.subject for q in dev.questions}) == 56
    assert max(Counter(q.subject for q in dev.questions).values()) == 5


def test_every_question_has_four_choices_and_an_answer_among_them(dev):
    for q in dev.questions:
        assert q.question and len(q.choices) == 4 and all(q.choices), q.id
        assert 0 <= q.answer < 4, q.id
        assert not any("(E)" in c or "\n" in c for c in q.choices), q.id
        assert "The answer is" not in q.question, q.id
    assert len({q.id for q in dev.questions}) == len(dev.questions)
    # The answers are spread over the letters (a parser stuck on one would not be).
    assert set(Counter(LETTERS[q.answer] for q in dev.questions)) == set(LETTERS)


def test_first_question_is_parsed_exactly(dev):
    first = dev.questions[0]
    assert first.id == "abstract_algebra:0"
    assert first.question.startswith("Statement 1 | Every element of a group generates")
    assert first.choices == ("True, True", "False, False", "True, False", "False, True")
    assert LETTERS[first.answer] == "C"


CLEAN = "What is 2+2?\n(A) 3 (B) 4 (C) 5 (D) 6\nA: Let's think step by step. The answer is (B)."


@pytest.mark.parametrize(("block", "reason"), [
    ("What?\n(A) 1 (B) 2 (C) 3 (D) 4 (E) 5\nA: The answer is (E).", "five choices"),
    ("What?\n(A) 1\n(B) 2\n(C) 3\n(D) 4\nA: The answer is (A).", "choices on lines"),
    ("What?\n(A) 1 (B) 2 (C) 3 (D) 4\nA: Let's think step by step.", "no answer"),
    ("What?\n(A) 1 (B) 2 (C) 3 (D) 4\nA: The answer is (A). The answer is (B).", "two"),
    ("\n(A) 1 (B) 2 (C) 3 (D) 4\nA: The answer is (A).", "no question"),
])
def test_malformed_blocks_are_skipped(block, reason):
    assert parse_block("s", 0, block) is None, reason


def test_clean_block_and_counting():
    question = parse_block("arithmetic", 3, CLEAN)
    assert question.choices == ("3", "4", "5", "6") and question.answer == 1
    assert question.id == "arithmetic:3"
    text = f"Header line.\n\nQ: {CLEAN}\n\nQ: What?\n(A) 1\n(B) 2\nA: x\n\n"
    questions, blocks, skipped = parse_mmlu_prompts({"arithmetic": text})
    assert (len(questions), blocks, skipped) == (1, 2, 1)


def test_missing_lm_eval_is_a_user_error(monkeypatch):
    monkeypatch.setattr(mmlu_dev.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="lm_eval"):
        mmlu_dev.mmlu_prompts_file()
