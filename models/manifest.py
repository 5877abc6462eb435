"""The one versioned manifest (`toolkit.json`) of every artifact, and the upgrade of old ones.

Format `edge-toolkit-artifact/2`, for every family:

    format    "edge-toolkit-artifact/2"
    family    a registered family name (models.family), which reads the directory
    recipe    the recipe that made it (dict), or None for a trained, uncompressed model
    stages    one entry per compression stage that ran (list, empty when none)
    metrics   measurements (dict, empty when none)
    versions  library versions that wrote it (dict)
    <section> the family's own keys (`ModelFamily.section_keys`): "moe" for a MoE LM,
              "config" and "input" for image models, none for a plain LLM
    files     {"names": every file, "weights": weight files, "weights_bytes",
              "total_bytes"}
    ...       optional keys: created, source_model, model_name, calibration,
              timing_seconds, method, data, ...

Format /1 (before the family registry) had three shapes: LLM artifacts without "family",
MoE LMs with "family": "moe-llm", and image models whose "files" was a list of names and
which had no recipe or stages. `upgrade_manifest` turns any of them into /2 in memory;
the files on disk are never rewritten.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from models.errors import ModelError
from models.json_file import read_json_object

MANIFEST_FILE = "toolkit.json"
FORMAT = "edge-toolkit-artifact/2"
FORMAT_V1 = "edge-toolkit-artifact/1"
# Format /1 LLM artifacts did not name their family.
V1_DEFAULT_FAMILY = "llm"
REWRITE_FIX = "re-run the command that wrote it"


@dataclasses.dataclass(frozen=True)
class ManifestHead:
    """The keys every /2 manifest has, with their types checked."""

    format: str
    family: str
    recipe: dict | None
    stages: list
    metrics: dict
    versions: dict

    @classmethod
    def of(cls, manifest: dict, source: str) -> ManifestHead:
        types = {"format": str, "family": str, "recipe": (dict, type(None)), "stages": list,
                 "metrics": dict, "versions": dict}
        for key, kind in types.items():
            if not isinstance(manifest.get(key), kind):
                raise ModelError(f"{source}: manifest key {key!r} is missing or not a "
                                 f"{_type_name(kind)}: re-create the artifact")
        if manifest["format"] != FORMAT:
            raise ModelError(f"{source}: format {manifest['format']!r} is not {FORMAT!r}: "
                             "re-create the artifact, or upgrade Edge Toolkit")
        return cls(**{key: manifest[key] for key in types})


def _type_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def read_manifest(directory: Path) -> dict | None:
    """The upgraded (/2) manifest of an artifact directory, None when it has none.
    Raises ModelError for unreadable JSON or an unknown format."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    return upgrade_manifest(read_json_object(path, REWRITE_FIX), str(path))


def upgrade_manifest(raw: dict, source: str = MANIFEST_FILE) -> dict:
    """A /2 manifest from a /1 or /2 one (a new dict; `raw` is left as it was)."""
    manifest = dict(raw)
    found = manifest.get("format", FORMAT_V1)  # the earliest /1 LLM artifacts had none
    if found not in (FORMAT_V1, FORMAT):
        raise ModelError(f"{source}: unknown artifact format {found!r} (this toolkit reads "
                         f"{FORMAT_V1!r} and {FORMAT!r}): upgrade Edge Toolkit")
    if found == FORMAT_V1:
        manifest["format"] = FORMAT
        manifest.setdefault("family", V1_DEFAULT_FAMILY)
        manifest.setdefault("recipe", None)
        manifest.setdefault("stages", [])
        manifest["metrics"] = manifest.get("metrics") or {}
        manifest.setdefault("versions", {})
        files = manifest.get("files")
        if isinstance(files, list):  # /1 image artifacts listed file names only
            manifest["files"] = {"names": list(files)}
    return manifest


def check_manifest(manifest: dict, source: str) -> ManifestHead:
    """Check the common keys and the family's section; returns the common keys."""
    from models.family import family_named

    head = ManifestHead.of(manifest, source)
    family_named(head.family, source=source).check_section(manifest, source)
    return head


def new_manifest_fields(family: str, manifest: dict) -> dict:
    """The schema's keys for a manifest being written: format and family set, the other
    common keys defaulted when the caller did not give them."""
    return {"format": FORMAT, "family": family, "recipe": manifest.get("recipe"),
            "stages": manifest.get("stages") or [], "metrics": manifest.get("metrics") or {},
            "versions": manifest.get("versions") or {}}
