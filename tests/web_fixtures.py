"""Tiny app-ready bundles for the web app's tests (apps/web) and the device bench's, made
through the real CLI (`toolkit export TARGET --model M --bundle DIR`, in-process) and
cached for the test session, so every test that needs, say, the fake portrait as LiteRT
shares one export.

    vision_bundle(tmp_dir, "fake-portrait" | "fake-vmoe" | "fake-cnn", "onnx" | "tflite")
    llm_bundle(tmp_dir)            fake-llama, onnx, --max-context 48

Each returns the bundle folder (bundle.json, the model, and for vision bundles
sample_input.bin / sample_output_<role>.bin: the recorded outputs a browser's run must
reproduce, see export.vision_bundle). `tmp_dir` is where a bundle is written the first
time it is asked for (a pytest tmp_path_factory folder); later calls return the cached
folder wherever it lies. A bundle that is gone (a test deleted it) is exported again.
Treat the folders as read-only: copy one before changing it.

As pytest fixtures (session scope): `web_vision_bundle(model, target)` and
`web_llm_bundle()`, both writing under one session temporary folder; import them into a
conftest.py or a test module to use them.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

LLM_MODEL = "fake-llama"
LLM_MAX_CONTEXT = 48
VISION_MODELS = ("fake-portrait", "fake-vmoe", "fake-cnn")
TARGETS = ("onnx", "tflite")
_CACHE: dict[tuple[str, str], Path] = {}


def vision_bundle(tmp_dir: Path, model: str, target: str) -> Path:
    """The bundle of vision `model` for `target` (exported once per session)."""
    if model not in VISION_MODELS or target not in TARGETS:
        raise ValueError(f"vision_bundle takes a model of {VISION_MODELS} and a target of "
                         f"{TARGETS}, not {model!r}, {target!r}")
    return _cached(tmp_dir, model, target)


def llm_bundle(tmp_dir: Path) -> Path:
    """fake-llama as an ONNX bundle with a 48-token context (exported once per session)."""
    return _cached(tmp_dir, LLM_MODEL, "onnx", "--max-context", str(LLM_MAX_CONTEXT),
                   "--new-tokens", "8")


def _cached(tmp_dir: Path, model: str, target: str, *extra: str) -> Path:
    key = (model, target)
    bundle = _CACHE.get(key)
    if bundle is None or not (bundle / "bundle.json").is_file():
        bundle = _fresh(Path(tmp_dir) / f"{model}-{target}")
        _export(model, target, bundle, *extra)
        _CACHE[key] = bundle
    return bundle


def _fresh(path: Path) -> Path:
    """`path`, or `path-1`, `path-2`, .. when a folder of that name is already there."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _export(model: str, target: str, bundle: Path, *extra: str) -> None:
    from toolkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["export", target, "--model", model, "--bundle", str(bundle),
                         "--quiet", *extra])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    if code != 0:
        raise RuntimeError(f"toolkit export {target} --model {model} --bundle {bundle} "
                           f"exited {code}: {err.getvalue().strip()[-2000:]}")


@pytest.fixture(scope="session")
def web_bundles_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("web-bundles")


@pytest.fixture(scope="session")
def web_vision_bundle(web_bundles_dir):
    """A function (model, target) -> bundle folder."""
    return lambda model, target: vision_bundle(web_bundles_dir, model, target)


@pytest.fixture(scope="session")
def web_llm_bundle(web_bundles_dir) -> Path:
    return llm_bundle(web_bundles_dir)
