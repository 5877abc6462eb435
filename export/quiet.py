"""Silence a converter's own console output (progress logs, C++ log lines) at the file
descriptor level and at Python's sys.stdout/stderr, keeping it for an error message."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def captured_console() -> Iterator[list[str]]:
    """Within the block, fds 1 and 2 go to a temporary file; the yielded list receives the
    captured lines when the block ends (also when it raises)."""
    lines: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    python_level = io.StringIO()  # print() to whatever sys.stdout is (e.g. a capture)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(python_level), \
                    contextlib.redirect_stderr(python_level):
                yield lines
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())
            lines.extend(python_level.getvalue().splitlines())
