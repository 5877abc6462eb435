"""Read a small JSON file a user may have damaged (config.json, a shard index): anything
but a JSON object is one ModelError naming the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

from models.errors import ModelError


def read_json_object(path: Path, fix: str, error: type[Exception] = ModelError) -> dict:
    """The JSON object in `path`; `fix` ends the message when it is not one. Upper floors
    pass their own `error` type (toolkit: UserError)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise error(f"{path} is not valid JSON: {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is not a JSON object: {fix}")
    return data
