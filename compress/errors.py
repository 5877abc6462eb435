"""Errors a user can cause inside `compress` (bad knobs, shapes a method cannot handle).

`compress` may not import `toolkit` (see ARCHITECTURE.md), so it has its own error type;
the CLI treats it exactly like `toolkit.errors.UserError`: one line on stderr, exit code 2.
"""


class CompressError(ValueError):
    """A compression request that cannot be carried out; the message names the fix."""
