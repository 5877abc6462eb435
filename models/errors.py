"""Errors a user can cause while naming or loading a model (the CLI exits 2 on them)."""


class ModelError(ValueError):
    """A model that cannot be found, read safely or used; the message names the fix."""
