"""Locate the text files that ship inside gensim's wheel (`gensim/test/test_data/`).

The build machines reach package registries only, so the real text the toolkit
calibrates and evaluates on comes from a pinned package instead of a download.
Paths are resolved through gensim itself, never hard-coded.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import UserError


def gensim_test_file(name: str) -> Path:
    """Path of `name` in gensim's bundled test data; UserError if it is not there."""
    from gensim.test.utils import datapath  # deferred: importing gensim takes ~1 s

    path = Path(datapath(name))
    if not path.is_file():
        raise UserError(
            f"gensim's test data file {name} is missing ({path}); "
            "reinstall gensim==4.4.0 from PyPI (its wheel ships gensim/test/test_data/)"
        )
    return path


def gensim_version() -> str:
    """The installed gensim version; part of cache keys because cleaning depends on it."""
    import gensim

    return str(gensim.__version__)
