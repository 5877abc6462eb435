"""Matching a model's free-text answer against gold answers.

Two rules, as in the QA evaluations LLM-KICK (arXiv 2310.01382) builds on:

- contains: a gold answer appears in the answer line as a whole word or phrase,
  case-insensitively (`(?<!\\w)gold(?!\\w)`: "Rome" matches "Rome, Italy" but not "Romeo");
- exact match (SQuAD, Rajpurkar et al., arXiv 1606.05250): the first answer, cut at the
  first newline or period, equals a gold answer after both are normalized (lower case,
  punctuation and the articles a/an/the dropped, whitespace collapsed).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FIRST_ANSWER_END = re.compile(r"[\n.]")


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation (any Unicode P* character) and articles, one space."""
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch
                   for ch in text.casefold())
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_line(continuation: str) -> str:
    """The continuation's first non-empty line: what the model answered before moving on
    (a few-shot model often goes on with the next "Q: ...", which must not count)."""
    for line in continuation.splitlines():
        if line.strip():
            return line.strip()
    return ""


def first_answer(continuation: str) -> str:
    """The continuation up to its first newline or period, leading whitespace ignored."""
    return _FIRST_ANSWER_END.split(continuation.lstrip(), maxsplit=1)[0].strip()


def contains_answer(text: str, golds: Iterable[str]) -> bool:
    """True when any gold appears in `text` as a whole word/phrase, ignoring case."""
    folded = " ".join(text.casefold().split())
    for gold in golds:
        pattern = r"(?<!\w)" + re.escape(" ".join(gold.casefold().split())) + r"(?!\w)"
        if gold.strip() and re.search(pattern, folded):
            return True
    return False


def exact_match(continuation: str, golds: Iterable[str]) -> bool:
    """True when the normalized first answer equals a normalized gold."""
    answer = normalize_answer(first_answer(continuation))
    return bool(answer) and answer in {normalize_answer(g) for g in golds}
