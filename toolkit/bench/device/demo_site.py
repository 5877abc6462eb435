"""What `toolkit serve` puts on the bench server for the demo pages: each bundle named on
the command line under models/<name>/ (its bundle.json and every file it lists, nothing
else), and the page that shows it: chat for an LLM, portrait for a segmenter, vmoe for
classifiers (every classifier bundle on one vmoe page, side by side)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from toolkit.bench.device.job import BUNDLE_MANIFEST, check_browser_runtime
from toolkit.errors import UserError

PAGE_OF_KIND = {"llm": "chat.html", "image-segmentation": "portrait.html",
                "image-classification": "vmoe.html"}


@dataclasses.dataclass
class ServedBundle:
    name: str  # URL folder: models/<name>/
    kind: str
    files: dict[str, Path]  # URL path -> file


def served_bundles(paths: list[str]) -> list[ServedBundle]:
    """Each bundle folder's files under a URL folder named after it (made unique)."""
    bundles, taken = [], set()
    for spec in paths:
        folder = Path(spec).expanduser()
        manifest_path = folder / BUNDLE_MANIFEST
        if not manifest_path.is_file():
            raise UserError(f"{spec} is not a bundle folder (no {BUNDLE_MANIFEST}): export one "
                            "with `toolkit export onnx|tflite --model M --bundle DIR`")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            listed = list(manifest["files"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{manifest_path} is not a readable bundle manifest: export the "
                            "bundle again") from None
        check_browser_runtime(spec, manifest.get("runtime"))
        kind = manifest.get("kind", "llm")
        if kind not in PAGE_OF_KIND:
            raise UserError(f"{spec} is a {kind!r} bundle, which no demo page shows")
        name = _unique(_slug(folder.resolve().name), taken)
        files = {f"models/{name}/{BUNDLE_MANIFEST}": manifest_path}
        for entry in listed:
            target = folder / entry
            if Path(entry).is_absolute() or ".." in Path(entry).parts or not target.is_file():
                raise UserError(f"{manifest_path} lists {entry!r}, which is not a file inside "
                                "the bundle: export the bundle again")
            files[f"models/{name}/{entry}"] = target
        bundles.append(ServedBundle(name, kind, files))
    return bundles


def demo_links(bundles: list[ServedBundle]) -> list[tuple[str, str]]:
    """(what, relative URL) for each demo page the bundles make: one chat or portrait page
    per bundle, one vmoe page for all classifiers."""
    links = [("home", "")]
    classifiers = [b for b in bundles if b.kind == "image-classification"]
    for bundle in bundles:
        if bundle.kind != "image-classification":
            links.append((f"{bundle.name} ({bundle.kind})",
                          f"{PAGE_OF_KIND[bundle.kind]}?bundle=models/{bundle.name}/"))
    if classifiers:
        query = ",".join(f"models/{b.name}/" for b in classifiers)
        links.append((f"{', '.join(b.name for b in classifiers)} (image-classification)",
                      f"vmoe.html?bundles={query}"))
    return links


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug or "bundle"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate
