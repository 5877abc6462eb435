"""Out-of-domain evaluation text: the Lee news corpus shipped with gensim.

`lee_background.cor` holds 300 ABC (Australian Broadcasting Corporation) news stories,
one per line. (`wc -l` reports 299 because the last line has no trailing newline;
DATA.md repeats that 299.) Perplexity on it shows whether a compressed model lost general language
ability or only overfit the Wikipedia calibration text. Recipe, fixed so numbers stay
comparable: strip each line, drop empty lines, join the stories with one blank line
("\\n\\n"). No cache: reading 360 KB takes milliseconds.
"""

from __future__ import annotations

from toolkit.data.gensim_files import gensim_test_file

NEWS_FILE = "lee_background.cor"
STORY_SEPARATOR = "\n\n"


def news_stories() -> list[str]:
    """The 300 stories, each stripped, in file order."""
    # read_text translates \r\n and \r; split on "\n" only, like iterating the file.
    text = gensim_test_file(NEWS_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.split("\n") if line.strip()]


def news_text() -> str:
    """The stories joined by one blank line."""
    return STORY_SEPARATOR.join(news_stories())
