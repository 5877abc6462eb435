"""The llama.cpp anchor without compiling llama.cpp: the build commands, when the environment
is (re)built, the statistics against hand-computed numbers, and the child script run end to
end against a fake `llama_cpp` module whose greedy next token is known. The real run on the
SmolLM2 GGUF is slow-marked and skipped when the built environment is absent."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import llamacpp_anchor as anchor

FAKE_LLAMA_CPP = '''
"""Stand-in for llama-cpp-python: the next token is always (last token + 1) % 100."""
import ctypes

__version__ = "0.0-fake"
N_VOCAB = 100
_logits = (ctypes.c_float * N_VOCAB)()


def llama_get_logits_ith(ctx, i):
    return ctypes.cast(_logits, ctypes.POINTER(ctypes.c_float))


def llama_print_system_info():
    return b"FAKE = 1"


class Llama:
    def __init__(self, model_path, n_ctx, n_batch, n_threads, n_threads_batch, seed,
                 verbose):
        assert n_threads == n_threads_batch and not verbose
        open(model_path, "rb").close()
        self.ctx = object()
        self.n_tokens = 0

    def n_vocab(self):
        return N_VOCAB

    def reset(self):
        self.n_tokens = 0

    def eval(self, tokens):
        self.n_tokens += len(tokens)
        for i in range(N_VOCAB):
            _logits[i] = 0.0
        _logits[(tokens[-1] + 1) % N_VOCAB] = 1.0
'''


def test_build_is_a_venv_then_pinned_source_build_at_low_priority(tmp_path) -> None:
    (venv, venv_env), (pip, pip_env) = anchor.install_commands(tmp_path / "env", "py3",
                                                                jobs=2)
    assert venv == ["py3", "-m", "venv", str(tmp_path / "env")] and venv_env == {}
    assert pip[:4] == ["nice", "-n", "10", str(tmp_path / "env" / "bin" / "python")]
    assert pip[-3:] == ["--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={anchor.LLAMA_CPP_PYTHON}"]
    flags = pip_env["CMAKE_ARGS"].split()
    assert {"-DGGML_AVX512=ON", "-DGGML_AMX_INT8=OFF", "-DGGML_CUDA=OFF"} <= set(flags)
    assert pip_env["CMAKE_BUILD_PARALLEL_LEVEL"] == "2"


def test_no_version_without_env_or_without_llama_cpp(tmp_path) -> None:
    assert anchor.installed_version(tmp_path / "bin" / "python") is None
    if importlib.util.find_spec("llama_cpp") is None:  # the toolkit's own env lacks it
        assert anchor.installed_version(Path(sys.executable)) is None


def test_existing_env_with_the_pinned_version_is_not_rebuilt(tmp_path, monkeypatch) -> None:
    (tmp_path / anchor.BUILD_STAMP).write_text(anchor.CMAKE_ARGS)
    monkeypatch.setattr(anchor, "installed_version", lambda python: anchor.LLAMA_CPP_PYTHON)
    monkeypatch.setattr(anchor.subprocess, "run", lambda *a, **k: pytest.fail("rebuilt"))
    assert anchor.ensure_env(tmp_path) == tmp_path / "bin" / "python"


def test_env_built_with_other_flags_is_rebuilt(tmp_path, monkeypatch) -> None:
    (tmp_path / anchor.BUILD_STAMP).write_text("-DGGML_NATIVE=ON")
    monkeypatch.setattr(anchor, "installed_version", lambda python: anchor.LLAMA_CPP_PYTHON)
    ran = []
    monkeypatch.setattr(anchor.subprocess, "run", lambda argv, **k:
                        ran.append(argv) or subprocess.CompletedProcess(argv, 0, "", ""))
    anchor.ensure_env(tmp_path)
    assert len(ran) == 2 and "--force-reinstall" in ran[1]
    assert (tmp_path / anchor.BUILD_STAMP).read_text() == anchor.CMAKE_ARGS


def test_missing_env_is_built_and_ignored_by_git(tmp_path, monkeypatch) -> None:
    versions = iter([None, anchor.LLAMA_CPP_PYTHON])
    ran = []

    def fake_run(argv, env, **kwargs):
        ran.append((argv, env.get("CMAKE_ARGS")))
        if argv[1:3] == ["-m", "venv"]:
            Path(argv[3]).mkdir()
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(anchor, "installed_version", lambda python: next(versions))
    monkeypatch.setattr(anchor.subprocess, "run", fake_run)
    env = tmp_path / "env"
    assert anchor.ensure_env(env) == env / "bin" / "python"
    assert [argv[1:3] for argv, _ in ran] == [["-m", "venv"], ["-n", "10"]]
    assert ran[1][1] == anchor.CMAKE_ARGS
    assert (env / ".gitignore").read_text() == "*\n"
    assert (env / anchor.BUILD_STAMP).read_text() == anchor.CMAKE_ARGS


def test_failed_build_says_which_command_and_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(anchor, "installed_version", lambda python: None)
    monkeypatch.setattr(anchor.subprocess, "run", lambda argv, **k:
                        subprocess.CompletedProcess(argv, 1, "", "cmake not found"))
    with pytest.raises(RuntimeError, match="venv.*cmake not found"):
        anchor.ensure_env(tmp_path / "env")


def test_statistics_are_medians_of_per_repeat_rates() -> None:
    child = {"load_seconds": 0.2, "peak_rss_bytes": 123, "version": "v", "system_info": "s",
             "runs": [
                 {"prefill_s": 0.064, "ttft_s": 0.070, "step_s": [0.01, 0.01, 0.02],
                  "tokens": [5, 6, 7, 8], "cores_busy": 1.0},
                 {"prefill_s": 0.032, "ttft_s": 0.030, "step_s": [0.01, 0.01, 0.01],
                  "tokens": [5, 6, 7, 8], "cores_busy": 2.0}]}
    summary = anchor.summarize(child, prompt_tokens=64)
    assert summary["prefill_tokens_per_s"] == pytest.approx(
        {"median": 1500.0, "min": 1000.0, "max": 2000.0})  # 64 / 0.064 and 64 / 0.032
    assert summary["decode_tokens_per_s"] == pytest.approx(
        {"median": 87.5, "min": 75.0, "max": 100.0})  # 3 / 0.04 and 3 / 0.03
    assert summary["decode_step_ms"] == pytest.approx({"median": 10.0, "min": 10.0,
                                                       "max": 20.0})
    assert summary["ttft_seconds"] == pytest.approx({"median": 0.05, "min": 0.03,
                                                     "max": 0.07})
    assert summary["cores_busy"] == {"median": 1.5, "min": 1.0, "max": 2.0}
    assert summary["tokens"] == [5, 6, 7, 8] and summary["tokens_same_every_run"]
    child["runs"][1]["tokens"] = [5, 6, 7, 9]
    child["runs"][0]["step_s"] = child["runs"][1]["step_s"] = []
    summary = anchor.summarize(child, prompt_tokens=64)
    assert not summary["tokens_same_every_run"] and summary["decode_tokens_per_s"] is None


def test_settings_are_checked_before_any_load(tmp_path) -> None:
    with pytest.raises(ValueError, match="exceed n_ctx 512"):
        anchor.child_config(tmp_path, [1] * 500, 13, 1, 1, 0, 512)
    with pytest.raises(ValueError, match="threads"):
        anchor.child_config(tmp_path, [1], 4, 0, 1, 0, 512)
    with pytest.raises(RuntimeError, match="--build"):
        anchor.run_anchor(tmp_path / "m.gguf", prompt=[1, 2], new_tokens=2,
                          python=tmp_path / "bin" / "python")


def test_child_script_decodes_greedily_and_times_every_step(tmp_path) -> None:
    (tmp_path / "llama_cpp.py").write_text(textwrap.dedent(FAKE_LLAMA_CPP))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    result = anchor.run_anchor(gguf, new_tokens=5, threads=2, repeats=3, warmup=1,
                               prompt=[10, 20, 97], python=Path(sys.executable),
                               extra_env={"PYTHONPATH": str(tmp_path)})
    assert result["extra_env"] == {"PYTHONPATH": str(tmp_path)}
    assert result["tokens"] == [98, 99, 0, 1, 2] and result["tokens_same_every_run"]
    assert result["prompt_tokens"] == 3 and result["threads"] == 2
    assert result["llama_cpp_python"] == "0.0-fake" and result["system_info"] == "FAKE = 1"
    low, mid, high = (result["decode_tokens_per_s"][k] for k in ("min", "median", "max"))
    assert 0 < low <= mid <= high
    assert result["ttft_seconds"]["median"] > 0 and result["peak_rss_bytes"] > 2**20
    assert len(result["load_average_1min"]) == 2  # before and after, to judge contention
    assert result["cores_busy"]["min"] >= 0  # the fake is too quick for a ratio


def test_default_prompt_is_toolkit_bench_ids() -> None:
    from toolkit.bench.session import bench_prompt

    assert anchor.default_prompt(64) == bench_prompt(64)
    assert len(set(anchor.default_prompt(64))) == 64


@pytest.mark.slow
def test_real_llama_cpp_on_smollm2_is_deterministic() -> None:
    stamp = anchor.ENV_DIR / anchor.BUILD_STAMP
    if (anchor.installed_version(anchor.env_python()) != anchor.LLAMA_CPP_PYTHON
            or not stamp.is_file() or stamp.read_text() != anchor.CMAKE_ARGS):
        pytest.skip("llama.cpp env not built: python -m benchmarks.llamacpp_anchor --build")
    try:
        gguf = anchor.default_gguf()
    except RuntimeError as error:
        pytest.skip(str(error))
    result = anchor.run_anchor(gguf, new_tokens=8, threads=1, repeats=2)
    assert len(result["tokens"]) == 8 and result["tokens_same_every_run"]
    assert result["prefill_tokens_per_s"]["median"] > 0
    assert json.dumps(result)  # the report is plain JSON
