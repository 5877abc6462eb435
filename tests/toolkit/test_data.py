"""The Wikipedia and news texts and their token streams, pinned to exact counts.

Every tool must see byte-identical text, so the counts below are part of the contract:
a change to any of them changes every perplexity and calibration hash in the project.
"""

from __future__ import annotations

import json

import pytest
import torch

from toolkit.data import (
    TokenStreams,
    build_streams,
    news_stories,
    news_text,
    tokenize_text,
    toolkit_cache_dir,
    wikipedia_articles,
    wikipedia_text,
)
from toolkit.data import wikipedia as wikipedia_module
from toolkit.data.wikipedia import is_redirect

WIKI_ARTICLES = 106
WIKI_CHARS = 3_098_382
WIKI_TOKENS = 731_530  # SmolLM2-135M-Instruct tokenizer, no special tokens
NEWS_STORIES = 300  # `wc -l` says 299: the last line has no newline
NEWS_TOKENS = 75_680


@pytest.fixture(scope="module")
def scratch_cache(tmp_path_factory):
    """One cache folder for the module, so tests never write to the user's home."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def articles(scratch_cache) -> list[tuple[str, str]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_TOOLKIT_CACHE", str(scratch_cache))
        return wikipedia_articles()


@pytest.fixture(scope="module")
def streams(smollm2_tokenizer, articles, scratch_cache) -> TokenStreams:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_TOOLKIT_CACHE", str(scratch_cache))  # reuses the built articles
        return build_streams(smollm2_tokenizer)


def test_wikipedia_counts(articles):
    assert len(articles) == WIKI_ARTICLES
    assert len("\n\n".join(text for _, text in articles)) == WIKI_CHARS


def test_articles_sorted_by_title(articles):
    titles = [title for title, _ in articles]
    assert titles == sorted(titles)
    assert len(set(titles)) == len(titles)


def test_no_redirects_or_empty_articles(articles):
    titles = {title for title, _ in articles}
    # Both a "#REDIRECT" and the dump's one lower-case "#redirect" page are gone.
    assert "AccessibleComputing" not in titles
    assert not any(":" in title for title in titles)  # the only non-article page redirects
    for _, text in articles:
        assert text and text == text.strip()
        assert not text.lower().startswith("#redirect")


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        ("#REDIRECT [[Computer accessibility]]", True),
        ("#redirect [[Anarchism]]", True),
        ("  \n#Redirect [[X]]", True),
        ("'''Anarchism''' is a political philosophy", False),
        ("See #REDIRECT later", False),
        ("", False),
    ],
)
def test_is_redirect(wikitext, expected):
    assert is_redirect(wikitext) is expected


def test_wikipedia_text_has_no_newline_runs(articles, monkeypatch):
    monkeypatch.setattr(wikipedia_module, "wikipedia_articles", lambda: articles)
    text = wikipedia_text()
    assert "\n\n\n" not in text
    assert text == text.strip()
    assert text == "\n\n".join(body for _, body in articles)


def test_news_stories():
    stories = news_stories()
    assert len(stories) == NEWS_STORIES
    assert all(story and story == story.strip() for story in stories)
    text = news_text()
    assert text == "\n\n".join(stories)
    assert "\n\n\n" not in text
    assert text.startswith("Hundreds of people have been forced to vacate their homes")


def test_token_counts_and_split(streams):
    total = len(streams.calib_pool) + len(streams.wiki_eval)
    assert total == WIKI_TOKENS
    assert len(streams.calib_pool) == int(0.9 * WIKI_TOKENS) == 658_377
    assert len(streams.wiki_eval) == WIKI_TOKENS - 658_377 == 73_153
    assert len(streams.news_eval) == NEWS_TOKENS
    for stream in (streams.calib_pool, streams.wiki_eval, streams.news_eval):
        assert stream.dtype == torch.int64 and stream.dim() == 1


def test_streams_start_with_the_first_article(streams, smollm2_tokenizer, articles):
    # The pool is the head of one tokenization of the whole text, not a re-tokenization.
    head = tokenize_text(smollm2_tokenizer, articles[0][1])
    assert torch.equal(streams.calib_pool[: len(head) - 1], head[:-1])


def test_tokenize_text_adds_no_special_tokens(smollm2_tokenizer):
    text = "The capital of France is"
    ids = tokenize_text(smollm2_tokenizer, text)
    assert ids.tolist() == smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.tolist() == smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert smollm2_tokenizer.bos_token_id not in ids.tolist()


def test_tokenize_text_does_not_warn_about_length(smollm2_tokenizer):
    key = "sequence-length-is-longer-than-the-specified-maximum"
    saved_max, saved_flag = smollm2_tokenizer.model_max_length, None
    saved_flag = smollm2_tokenizer.deprecation_warnings.pop(key, None)
    smollm2_tokenizer.model_max_length = 8
    try:
        ids = tokenize_text(smollm2_tokenizer, "hello world " * 20)
        assert len(ids) > 8  # nothing truncated
        assert key not in smollm2_tokenizer.deprecation_warnings  # no warning was logged
    finally:
        smollm2_tokenizer.model_max_length = saved_max
        if saved_flag is not None:
            smollm2_tokenizer.deprecation_warnings[key] = saved_flag


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_TOOLKIT_CACHE", str(tmp_path))
    assert toolkit_cache_dir() == tmp_path
    monkeypatch.delenv("EDGE_TOOLKIT_CACHE")
    assert toolkit_cache_dir().parts[-2:] == (".cache", "edge-toolkit")


def test_second_call_reads_the_cache(monkeypatch, tmp_path, articles):
    monkeypatch.setenv("EDGE_TOOLKIT_CACHE", str(tmp_path))
    first = wikipedia_text()
    cached = list((tmp_path / "data").iterdir())
    assert len(cached) == 1
    name = cached[0].name
    assert "gensim4.4.0" in name and len(name.split("-")[-1].removesuffix(".json")) == 64

    def fail(_dump):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(wikipedia_module, "build_wikipedia_articles", fail)
    assert wikipedia_text() == first
    assert wikipedia_articles() == articles


def test_corrupt_cache_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_TOOLKIT_CACHE", str(tmp_path))
    dump = wikipedia_module.gensim_test_file(wikipedia_module.WIKI_DUMP)
    path = wikipedia_module.wikipedia_cache_path(dump)
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    fake = [("A", "alpha"), ("B", "beta")]
    monkeypatch.setattr(wikipedia_module, "build_wikipedia_articles", lambda _dump: fake)
    assert wikipedia_articles() == fake
    assert json.loads(path.read_text(encoding="utf-8")) == [["A", "alpha"], ["B", "beta"]]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
