"""The "data" section of a portrait artifact's manifest: what the model was trained and
tested on, built from the toolkit's data sets (models/ may not import them). The artifact
itself is written by `toolkit.artifacts.save_model_artifact` through the portrait family
(models/families/portrait.py)."""

from __future__ import annotations

from toolkit.data.portraits import PortraitSet


def data_section(train: PortraitSet, test: PortraitSet | None, *, generated: bool,
                 seed: int | None, test_seed: int | None = None) -> dict:
    """What the model was trained and tested on; `generated` marks synthetic portraits,
    whose numbers say nothing about real photos."""
    section = {"generated": generated,
               "description": ("generated data: synthetic portraits" if generated
                               else "user-provided portrait folder"),
               "train": {"source": train.source, "count": len(train), "sha256": train.sha256,
                         "seed": seed},
               "attribute_names": list(train.attribute_names)}
    if test is not None:
        section["test"] = {"source": test.source, "count": len(test), "sha256": test.sha256,
                           "seed": test_seed}
    return section
