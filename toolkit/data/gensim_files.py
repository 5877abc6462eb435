"""Locate the text files that ship inside gensim's wheel (`gensim/test/test_data/`).

The build machines reach package registries only, so the real text the toolkit
calibrates and evaluates on comes from a pinned package instead of a download.
The folder is found through gensim's import spec (the same folder that
`gensim.test.utils.datapath` uses) without importing gensim, which takes about 1.5 s
and is not needed when the cleaned text is already cached.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from toolkit.errors import UserError

_FIX = "install gensim==4.4.0 from PyPI (its wheel ships gensim/test/test_data/)"


def gensim_test_file(name: str) -> Path:
    """Path of `name` in gensim's bundled test data; UserError if it is not there."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise UserError(f"gensim is not installed, so its test data file {name} is missing; {_FIX}")
    path = Path(spec.origin).parent / "test" / "test_data" / name
    if not path.is_file():
        raise UserError(f"gensim's test data file {name} is missing ({path}); {_FIX}")
    return path


def gensim_version() -> str:
    """The installed gensim version; part of cache keys because cleaning depends on it."""
    return importlib.metadata.version("gensim")
