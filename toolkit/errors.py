"""Errors a user can cause. The CLI prints their message as one line and exits with 2.

`compress`, `export` and `models` sit on lower floors and may not import this module, so each has
its own error type; `USER_ERRORS` gathers all of them for the CLI.
"""

from compress.errors import CompressError
from export.errors import ExportError
from models.errors import ModelError


class UserError(Exception):
    """Bad input from the user; the message names the input and how to fix it."""


USER_ERRORS = (UserError, CompressError, ModelError, ExportError)
