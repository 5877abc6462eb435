"""Tiny Core ML bundles (`toolkit export coreml --model M --bundle DIR`, through the real
CLI in-process), exported once per test session and shared by tests/apps (the Swift
manifest keys) and tests/toolkit/test_export_coreml_bundle.py.

    coreml_bundle(tmp_dir, "fake-vmoe")           vision, float32
    coreml_bundle(tmp_dir, "fake-portrait")       vision, float32
    coreml_bundle(tmp_dir, "fake-llama")          LLM in two chunks, --max-context 48

Treat the folders as read-only: copy one before changing it. Callers skip when
coremltools is missing (pytest.importorskip("coremltools")).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

LLM_ARGS = ("--max-context", "48", "--new-tokens", "6", "--chunks", "2")
_CACHE: dict[str, Path] = {}


def coreml_bundle(tmp_dir: Path, model: str) -> Path:
    """The Core ML bundle of `model` (exported the first time it is asked for)."""
    bundle = _CACHE.get(model)
    if bundle is None or not (bundle / "bundle.json").is_file():
        bundle = Path(tmp_dir) / f"{model}-coreml"
        n = 0
        while bundle.exists():
            n += 1
            bundle = Path(tmp_dir) / f"{model}-coreml-{n}"
        extra = LLM_ARGS if model == "fake-llama" else ()
        code, err = run_cli("export", "coreml", "--model", model, "--bundle", bundle,
                            "--quiet", *extra)
        if code != 0:
            raise RuntimeError(f"toolkit export coreml --model {model} --bundle exited "
                               f"{code}: {err.strip()[-2000:]}")
        _CACHE[model] = bundle
    return bundle


def run_cli(*argv: object) -> tuple[int, str]:
    """(exit code, stderr) of `toolkit ARGS` run in-process."""
    from toolkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()
