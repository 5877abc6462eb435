"""Factoid questions from gensim's analogy file: sections, dedupe, question text, answers."""

from __future__ import annotations

from collections import Counter

import pytest

from toolkit.data.analogy_questions import (
    SECTIONS,
    accepted_answers,
    analogy_pairs,
    factoid_questions,
)
from toolkit.errors import UserError


@pytest.fixture(scope="module")
def questions():
    return factoid_questions()


def test_counts_per_section(questions):
    # Unique pairs per section, counted from the file: 23 capital-common-countries, 116
    # capital-world (23 of them the common countries again, asked once), 30 currencies,
    # 67 cities.
    assert Counter(q.section for q in questions) == {
        "capital-common-countries": 23, "capital-world": 93, "currency": 30,
        "city-in-state": 67}
    pairs = analogy_pairs()
    assert len(pairs["capital-world"]) == 116 and len(pairs["capital-common-countries"]) == 23
    assert set(pairs["capital-common-countries"]) <= set(pairs["capital-world"])


def test_every_question_is_asked_once(questions):
    assert len({q.question for q in questions}) == len(questions) == 213
    assert len({q.id for q in questions}) == len(questions)


def test_question_text_and_answers(questions):
    by_id = {q.id: q for q in questions}
    greece = by_id["capital-common-countries:Greece"]
    assert greece.question == "What is the capital of Greece?" and greece.golds == ("Athens",)
    assert greece.fact() == "The capital of Greece is Athens."
    algeria = by_id["currency:Algeria"]
    assert algeria.question == "What is the currency of Algeria?"
    assert algeria.golds == ("dinar",) and "dinars" in algeria.accepted
    assert algeria.fact() == "The currency of Algeria is the dinar."
    chicago = by_id["city-in-state:Chicago"]
    assert chicago.question == "In which US state is Chicago?"
    assert chicago.golds == ("Illinois",) and chicago.fact() == "Chicago is a city in Illinois."
    assert by_id["currency:USA"].question == "What is the currency of the USA?"
    # A city the file places in two states accepts both.
    assert by_id["city-in-state:Glendale"].golds == ("Arizona", "California")
    assert "Kyiv" in by_id["capital-world:Ukraine"].accepted
    assert "capital-world:Greece" not in by_id  # deduplicated into the common section


def test_accepted_answers_add_aliases_and_currency_plurals():
    assert accepted_answers("currency", ("peso",)) == ("peso", "pesos")
    assert accepted_answers("currency", ("lats",)) == ("lats", "lati")  # no "latss"
    assert set(accepted_answers("currency", ("real",))) == {"real", "reais", "reals"}
    assert accepted_answers("capital-world", ("Paris",)) == ("Paris",)


def test_parses_a_small_file_and_dedupes_pairs(tmp_path):
    path = tmp_path / "questions-words.txt"
    path.write_text(": capital-common-countries\nAthens Greece Rome Italy\n"
                    "Rome Italy Athens Greece\n: capital-world\nAthens Greece Lima Peru\n"
                    ": currency\nJapan yen Japan yen\n: city-in-state\n"
                    "Reno Nevada Glendale Arizona\nGlendale California Reno Nevada\n"
                    ": family\nboy girl king queen\n", encoding="utf-8")
    questions = factoid_questions(path=path)
    assert [(q.section, q.subject, q.golds) for q in questions] == [
        ("capital-common-countries", "Greece", ("Athens",)),
        ("capital-common-countries", "Italy", ("Rome",)),
        ("capital-world", "Peru", ("Lima",)),
        ("currency", "Japan", ("yen",)),
        ("city-in-state", "Reno", ("Nevada",)),
        ("city-in-state", "Glendale", ("Arizona", "California")),
    ]
    assert factoid_questions(("currency",), path=path)[0].question == \
        "What is the currency of Japan?"


def test_malformed_file_and_unknown_section_are_user_errors(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(": currency\nJapan yen Japan\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        factoid_questions(path=path)
    with pytest.raises(UserError, match="family"):
        factoid_questions(("family",))
    assert "family" not in SECTIONS
