"""The Wikipedia text every tool calibrates and evaluates on, built one fixed way.

Numbers (perplexity, calibration hashes) are only comparable across tools and runs if
the text is byte-for-byte identical, so the recipe is fixed here and nowhere else:

1. read the 206 pages of gensim's shortened enwiki dump with
   `gensim.corpora.wikicorpus.extract_pages(f, filter_namespaces=("0",))`, which yields
   `(title, wikitext, pageid)` and gives pages outside the main (article) namespace an
   empty text;
2. drop pages with empty text and redirects: wikitext that starts, after leading
   whitespace, with `#REDIRECT` in any case (MediaWiki's own rule). In this dump that is
   100 pages (99 `#REDIRECT`, 1 `#redirect`); the only non-article page is one of them;
3. clean each with gensim's `filter_wiki`, collapse runs of three or more newlines to
   two, strip, and drop any article left empty (none in this dump);
4. sort by title (Python string order) and join with one blank line.

With gensim 4.4.0 this gives 106 articles and 3,098,382 characters. Building takes
about 2 s, so the articles are cached as JSON under `toolkit_cache_dir()/data/`, keyed
by the dump's sha256, the gensim version and the recipe version below.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import re
from pathlib import Path

from toolkit.data.cache import (
    data_cache_dir,
    discard_damaged,
    note_unwritable,
    write_text_atomic,
)
from toolkit.data.gensim_files import gensim_test_file, gensim_version

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
ARTICLE_SEPARATOR = "\n\n"
# Bump when the recipe above changes, so that caches built by the old recipe are ignored.
RECIPE_VERSION = 1

_NEWLINE_RUN = re.compile(r"\n{3,}")


def is_redirect(wikitext: str) -> bool:
    """True for a redirect page: `#REDIRECT` (any case) opens the wikitext."""
    return wikitext.lstrip()[:9].lower() == "#redirect"


def clean_article(wikitext: str) -> str:
    """Plain text of one article: `filter_wiki`, then at most one blank line in a row."""
    from gensim.corpora.wikicorpus import filter_wiki

    return _NEWLINE_RUN.sub("\n\n", filter_wiki(wikitext)).strip()


def build_wikipedia_articles(dump: Path) -> list[tuple[str, str]]:
    """Parse and clean `dump` from scratch (no cache); (title, text) sorted by title."""
    from gensim.corpora.wikicorpus import extract_pages

    articles = []
    with bz2.open(dump, "rb") as handle:
        for title, wikitext, _pageid in extract_pages(handle, filter_namespaces=("0",)):
            if not wikitext.strip() or is_redirect(wikitext):
                continue
            text = clean_article(wikitext)
            if text:
                articles.append((title, text))
    return sorted(articles, key=lambda article: article[0])


def wikipedia_cache_path(dump: Path) -> Path:
    """Cache file name: recipe version, gensim version and the dump's sha256."""
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()
    name = f"wikipedia-r{RECIPE_VERSION}-gensim{gensim_version()}-{digest}.json"
    return data_cache_dir() / name


def _read_cache(path: Path) -> list[tuple[str, str]] | None:
    """The cached articles, or None if absent; a damaged entry (truncated, not JSON, not a
    list of [title, text] pairs, a folder) is removed, said, and then rebuilt."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        discard_damaged(path, type(exc).__name__)
        return None
    valid = isinstance(raw, list) and bool(raw) and all(
        isinstance(item, list) and len(item) == 2 and all(isinstance(s, str) for s in item)
        for item in raw
    )
    if not valid:
        discard_damaged(path, "not a list of [title, text] pairs")
        return None
    return [(title, text) for title, text in raw]


def wikipedia_articles() -> list[tuple[str, str]]:
    """The 106 cleaned articles as (title, text), sorted by title; cached on disk."""
    dump = gensim_test_file(WIKI_DUMP)
    cache = wikipedia_cache_path(dump)
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    articles = build_wikipedia_articles(dump)
    try:
        write_text_atomic(cache, json.dumps(articles, ensure_ascii=False))
    except OSError as exc:  # a read-only home must not stop the toolkit, only slow it
        note_unwritable(cache, exc)
    return articles


def wikipedia_text() -> str:
    """All articles joined by one blank line: the text behind calibration and wiki eval."""
    return ARTICLE_SEPARATOR.join(text for _title, text in wikipedia_articles())
