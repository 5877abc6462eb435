"""Answer matching: whole-word contains (closed book) and SQuAD exact match (open book)."""

from __future__ import annotations

import pytest

from toolkit.data.analogy_questions import accepted_answers
from toolkit.eval.answers import (
    answer_line,
    contains_answer,
    exact_match,
    first_answer,
    normalize_answer,
)


@pytest.mark.parametrize(("text", "golds", "expected"), [
    (" Rome", ["Rome"], True),
    (" rome, of course", ["Rome"], True),  # case-insensitive
    ("ROME!", ["Rome"], True),  # punctuation next to the word
    (" Romeo and Juliet", ["Rome"], False),  # word boundary: Rome is not in Romeo
    (" Jerome", ["Rome"], False),
    (" It is in Rome.", ["Rome"], True),
    (" Washington, D.C.", ["Washington"], True),
    (" New York", ["York"], True),  # a whole word inside a longer answer still counts
    (" Buenos Aires", ["Buenos Aires"], True),  # multi-word gold
    (" Buenos  Aires", ["Buenos Aires"], True),  # whitespace collapsed
    (" Nur-Sultan", ["Astana", "Nur-Sultan"], True),  # an alias
    (" Chișinău", ["Chisinau", "Chișinău"], True),  # non-ASCII alias
    (" pesos", ["peso"], False),  # plural only through an explicit alias ...
    (" pesos", accepted_answers("currency", ("peso",)), True),  # ... which currency adds
    (" zlotys", accepted_answers("currency", ("zloty",)), True),
    (" kroner", accepted_answers("currency", ("krone",)), True),
    ("", ["Rome"], False),
    (" Paris", [""], False),  # an empty gold never matches
])
def test_contains_answer(text, golds, expected):
    assert contains_answer(text, golds) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("The Dinar.", "dinar"),  # article, case and punctuation
    ("  an  Euro ", "euro"),
    ("A peso", "peso"),
    ("Nur-Sultan", "nur sultan"),
    ("the", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(("continuation", "expected"), [
    (" Athens\nQ: What is", "Athens"),
    (" Athens. It is old", "Athens"),
    ("\n Athens\n", "Athens"),  # leading whitespace, newlines included, is skipped
    (" Athens", "Athens"),
    ("", ""),
])
def test_first_answer_stops_at_newline_or_period(continuation, expected):
    assert first_answer(continuation) == expected


def test_answer_line_is_the_first_non_empty_line():
    assert answer_line(" Paris\nQ: What is the capital of Rome?\nA: Rome") == "Paris"
    assert answer_line("\n\n  Lima \n") == "Lima"
    assert answer_line("\n") == ""


@pytest.mark.parametrize(("continuation", "golds", "expected"), [
    (" Athens\n", ["Athens"], True),
    (" the dinar.", ["dinar"], True),  # article and period
    (" Dinar\nQ:", ["dinar"], True),
    (" Athens, Greece", ["Athens"], False),  # exact match: more than the answer
    (" Algerian dinar", ["dinar"], False),
    (" Romeo", ["Rome"], False),
    (" Kyiv", ["Kiev", "Kyiv"], True),
    ("\nAthens", ["Athens"], True),
    ("", ["Athens"], False),
    (" .", [""], False),  # an empty answer never matches, not even an empty gold
])
def test_exact_match(continuation, golds, expected):
    assert exact_match(continuation, golds) is expected
