"""Factoid questions built from the knowledge sections of the Google analogy set.

The analogy set (Mikolov et al., arXiv 1301.3781) ships with gensim as
`questions-words.txt`: sections headed `: NAME`, then lines `a b c d` meaning
"a is to b as c is to d". In the knowledge sections each line holds two facts, (a, b) and
(c, d): (Athens, Greece), (Chicago, Illinois), (Algeria, dinar). Deduplicated, they become
natural questions with short gold answers, the kind of knowledge-intensive probe LLM-KICK
(Jaiswal et al., arXiv 2310.01382) uses to show damage that perplexity hides:

    capital-common-countries, capital-world   What is the capital of Greece?   -> Athens
    currency                                  What is the currency of Algeria? -> dinar
    city-in-state                             In which US state is Chicago?    -> Illinois

A question asked by two sections (every capital-common-countries pair is in capital-world
too) is kept once, in the first section. Accepted answers add a few aliases (Kyiv for
Kiev, plurals of currencies) so that a correct answer in another common form still counts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from toolkit.data.gensim_files import gensim_test_file
from toolkit.errors import UserError

ANALOGY_FILE = "questions-words.txt"


@dataclasses.dataclass(frozen=True)
class SectionTemplate:
    """How a section's (subject, answer) pair reads as a question and as a stated fact."""

    subject_is_first: bool  # capital-*: the file says (Athens, Greece); Greece is asked about
    question: str  # uses {subject}
    fact: str  # uses {subject} and {answer}


_CAPITAL = SectionTemplate(False, "What is the capital of {subject}?",
                           "The capital of {subject} is {answer}.")
SECTIONS: dict[str, SectionTemplate] = {
    "capital-common-countries": _CAPITAL,
    "capital-world": _CAPITAL,
    "currency": SectionTemplate(True, "What is the currency of {subject}?",
                                "The currency of {subject} is the {answer}."),
    "city-in-state": SectionTemplate(True, "In which US state is {subject}?",
                                     "{subject} is a city in {answer}."),
}

# Names that read better with an article inside a sentence.
_SUBJECT_NAMES = {"USA": "the USA", "Bahamas": "the Bahamas", "Philippines": "the Philippines",
                  "Gambia": "the Gambia"}

# Other spellings of a gold answer that a model knowing the fact may write.
_ALIASES: dict[str, tuple[str, ...]] = {
    "Kiev": ("Kyiv",), "Astana": ("Nur-Sultan",), "Bern": ("Berne",),
    "Chisinau": ("Chișinău",), "Ashgabat": ("Ashgabad",), "Beijing": ("Peking",),
    # "What is the capital of Georgia?" also fits the US state; Atlanta is knowledge too.
    "Tbilisi": ("Atlanta",),
    # Currency plurals that do not simply add "s".
    "real": ("reais",), "lev": ("leva",), "krone": ("kroner",), "krona": ("kronor",),
    "lats": ("lati",), "litas": ("litai",), "leu": ("lei",), "kuna": ("kune",),
    "denar": ("denari",), "zloty": ("zlotys", "złoty"), "ruble": ("rouble", "roubles"),
    "hryvnia": ("hryvnya",),
}


@dataclasses.dataclass(frozen=True)
class FactoidQuestion:
    section: str
    subject: str  # as written in the analogy file: "Greece", "Chicago", "Algeria"
    golds: tuple[str, ...]  # every answer the file gives (Glendale: Arizona, California)
    accepted: tuple[str, ...]  # golds plus aliases, what the scorers accept
    question: str  # "What is the capital of Greece?"

    @property
    def id(self) -> str:
        return f"{self.section}:{self.subject}"

    def fact(self) -> str:
        """The fact as one sentence (for open-book passages), with the first gold."""
        template = SECTIONS[self.section]
        return template.fact.format(subject=display_subject(self.subject), answer=self.golds[0])


def display_subject(subject: str) -> str:
    return _SUBJECT_NAMES.get(subject, subject)


def accepted_answers(section: str, golds: tuple[str, ...]) -> tuple[str, ...]:
    """`golds`, their aliases and, for currencies, the plural with "s"."""
    accepted = list(golds)
    for gold in golds:
        accepted.extend(_ALIASES.get(gold, ()))
        if section == "currency" and not gold.endswith("s"):
            accepted.append(gold + "s")
    return tuple(dict.fromkeys(accepted))


def analogy_pairs(path: Path | None = None) -> dict[str, dict[str, set[str]]]:
    """Every section of the analogy file: {section: {first word: {second words}}}.

    Each line `a b c d` contributes the pairs (a, b) and (c, d); repeated pairs collapse.
    """
    path = path or gensim_test_file(ANALOGY_FILE)
    sections: dict[str, dict[str, set[str]]] = {}
    current: dict[str, set[str]] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(":"):
            current = sections.setdefault(line[1:].strip(), {})
            continue
        words = line.split()
        if current is None or len(words) != 4:
            raise UserError(f"{path} line {number} is not `a b c d` inside a `: section`: "
                            "reinstall gensim==4.4.0")
        for first, second in ((words[0], words[1]), (words[2], words[3])):
            current.setdefault(first, set()).add(second)
    return sections


def factoid_questions(sections: tuple[str, ...] = tuple(SECTIONS),
                      path: Path | None = None) -> list[FactoidQuestion]:
    """The deduplicated questions of `sections`, in file order within each section."""
    pairs = analogy_pairs(path)
    questions: list[FactoidQuestion] = []
    asked: set[str] = set()
    for section in sections:
        if section not in pairs or section not in SECTIONS:
            raise UserError(f"analogy section {section!r} is unknown: choose from "
                            f"{', '.join(SECTIONS)}")
        template = SECTIONS[section]
        for subject, golds in _subject_answers(pairs[section], template).items():
            text = template.question.format(subject=display_subject(subject))
            if text in asked:
                continue
            asked.add(text)
            ordered = tuple(sorted(golds))
            questions.append(FactoidQuestion(section, subject, ordered,
                                             accepted_answers(section, ordered), text))
    return questions


def _subject_answers(section_pairs: dict[str, set[str]],
                     template: SectionTemplate) -> dict[str, set[str]]:
    if template.subject_is_first:
        return section_pairs
    flipped: dict[str, set[str]] = {}
    for answer, subjects in section_pairs.items():
        for subject in subjects:
            flipped.setdefault(subject, set()).add(answer)
    return flipped
