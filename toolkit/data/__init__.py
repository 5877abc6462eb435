"""Real text for calibration and evaluation, built one fixed way (see DATA.md).

Wikipedia articles and ABC news stories from gensim's bundled test data, token streams
split 90/10 into a calibration pool and held-out evaluation, seeded calibration
sampling and fixed evaluation windows. Reaches `compress` only as tensors.
"""

from toolkit.data.cache import toolkit_cache_dir
from toolkit.data.calibration import read_calibration_file, sample_calibration, token_hash
from toolkit.data.news import news_stories, news_text
from toolkit.data.streams import TokenStreams, build_streams, cached_streams, tokenize_text
from toolkit.data.wikipedia import wikipedia_articles, wikipedia_text
from toolkit.data.windows import eval_windows

__all__ = [
    "TokenStreams",
    "build_streams",
    "cached_streams",
    "eval_windows",
    "news_stories",
    "news_text",
    "read_calibration_file",
    "sample_calibration",
    "token_hash",
    "tokenize_text",
    "toolkit_cache_dir",
    "wikipedia_articles",
    "wikipedia_text",
]
