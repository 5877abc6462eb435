"""`toolkit export onnx --engine streaming` as a user runs it: a checkpoint or compressed
artifact read one weight at a time gives the same verdict, the same carried layers and the
same logits as the in-memory export of it, with the weights in `NAME.onnx.data` beside the
graph; `auto` streams only above `--memory-budget`; tflite streams too (in chunks); and
a disk that fills up mid-file leaves the destination as it was and no staging folder
behind.

The logits are compared by running both written files with onnxruntime here, on a prompt
of our own, rather than trusting the verification each export reports against PyTorch."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.toolkit.test_cli import SMALL

pytest.importorskip("onnxruntime")
EXPORT = ["--max-context", "48", "--new-tokens", "8", "--quiet"]
MAX_CONTEXT = 48
GPTQ4 = ["--method", "gptq", "--bits", "4", "--group-size", "32"]
STREAMING_WORDS = "read one weight at a time"
PROMPT = "The quick brown fox jumps over the lazy dog"


# --- helpers -------------------------------------------------------------------------------


def _export(toolkit_cli, model, out: Path, *extra: object) -> tuple[object, dict]:
    """`toolkit export onnx` into `out` with --json beside it; (result, report dict)."""
    report = out.with_name(out.stem + ".json")
    result = toolkit_cli("export", "onnx", "--model", model, "--out", out,
                         "--json", report, *EXPORT, *extra)
    assert result.code == 0, result.err
    return result, json.loads(report.read_text(encoding="utf-8"))


def _refused(result, *needles: str) -> str:
    """Exit 2 with exactly one line on stderr, holding every needle."""
    assert result.code == 2, (result.code, result.err)
    assert len(result.err_lines) == 1, result.err
    assert result.err.startswith("toolkit export: error: "), result.err
    for needle in needles:
        assert needle in result.err, (needle, result.err)
    return result.err


def _contents(folder: Path) -> dict[str, str]:
    """Every entry of `folder` (hidden ones too) -> a hash of its bytes ("dir" for folders)."""
    return {p.name: ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir())}


def _cache_shape(model_dir: Path) -> list[int]:
    """[layers, key/value heads, max context, head size], from the HF config alone."""
    config = json.loads((model_dir / "config.json").read_text())
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return [config["num_hidden_layers"], config["num_key_value_heads"], MAX_CONTEXT, head]


def _onnx_run(path: Path, prompt: list[int], cache_shape: list[int]):
    """(greedy tokens, prefill logits) of the file at `path`, run by onnxruntime."""
    import onnx

    from export.llm.greedy import greedy_tokens
    from export.onnx.verify_llm import onnx_step

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in graph.input}
    # Head width 16: the fused attention, one [1, kv heads, context, head] cache per layer.
    layer = [1, *cache_shape[1:]]
    assert all(declared[f"past_{kind}.{i}"] == layer for kind in ("key", "value")
               for i in range(cache_shape[0]))
    return greedy_tokens(onnx_step(path, threads=1), prompt, 8, cache_shape, MAX_CONTEXT)


def _assert_same_logits(a: Path, b: Path, prompt: list[int], cache_shape: list[int]) -> None:
    tokens_a, logits_a = _onnx_run(a, prompt, cache_shape)
    tokens_b, logits_b = _onnx_run(b, prompt, cache_shape)
    assert logits_a.shape == (len(prompt), logits_a.shape[1])
    scale = float(np.abs(logits_b).max())
    assert scale > 0
    assert float(np.abs(logits_a - logits_b).max()) <= 1e-4 * scale
    assert tokens_a == tokens_b


def _passed(report: dict) -> None:
    assert report["verdict"] == "passed", report["verdict"]
    check = report["verification"]
    assert check["passed"] and check["tokens_match"], check
    assert len(check["runtime_tokens"]) == 8


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gptq4(toolkit_cli, fake_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "gptq4"
    result = toolkit_cli("compress", "--model", fake_model_dir, *GPTQ4, "--out", out, *SMALL)
    assert result.code == 0, result.err
    return out


@pytest.fixture(scope="module")
def prompt(fake_model_dir) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(fake_model_dir)(PROMPT, add_special_tokens=False)
    return ids["input_ids"][:MAX_CONTEXT - 8]


@pytest.fixture(scope="module")
def exports(toolkit_cli, fake_model_dir, gptq4, tmp_path_factory) -> dict:
    """(model, engine) -> (folder, result, report) for the HF dir and its GPTQ artifact, each
    exported in memory and streamed, each into a folder of its own."""
    made = {}
    for model_name, model in (("hf", fake_model_dir), ("gptq4", gptq4)):
        for engine in ("memory", "streaming"):
            folder = tmp_path_factory.mktemp(f"{model_name}-{engine}")
            result, report = _export(toolkit_cli, model, folder / "m.onnx",
                                     "--engine", engine)
            made[model_name, engine] = folder, result, report
    return made


# --- 1. streamed == in memory --------------------------------------------------------------


@pytest.mark.parametrize("model", ["hf", "gptq4"])
def test_streamed_export_passes_and_writes_graph_and_data(exports, model):
    folder, result, report = exports[model, "streaming"]
    _passed(report)
    assert result.err_lines == []  # --quiet: no progress, no warnings
    assert sorted(p.name for p in folder.iterdir()) == ["m.json", "m.onnx", "m.onnx.data"]
    assert report["path"] == os.fspath(folder / "m.onnx")
    # The external data holds the weights: the graph keeps only small tables.
    graph, data = (folder / "m.onnx").stat().st_size, (folder / "m.onnx.data").stat().st_size
    assert data > 2 * graph
    assert report["file_bytes"] == graph + data


@pytest.mark.parametrize(("model", "carried"), [
    ("hf", {}), ("gptq4", {"MatMulNBits 4-bit, block 32": 14})])
def test_streamed_export_carries_what_the_in_memory_one_does(exports, model, carried):
    streamed, in_memory = exports[model, "streaming"][2], exports[model, "memory"][2]
    _passed(in_memory)
    assert streamed["carried"] == in_memory["carried"] == carried
    assert streamed["dropped"] == in_memory["dropped"] == []
    assert streamed["lost"] == in_memory["lost"] == []
    assert streamed["float32_bytes"] == in_memory["float32_bytes"]
    assert streamed["verification"]["runtime_tokens"] == \
        in_memory["verification"]["runtime_tokens"]


@pytest.mark.parametrize("model", ["hf", "gptq4"])
def test_streamed_and_in_memory_files_give_the_same_logits(exports, fake_model_dir, prompt,
                                                           model):
    _assert_same_logits(exports[model, "streaming"][0] / "m.onnx",
                        exports[model, "memory"][0] / "m.onnx", prompt,
                        _cache_shape(fake_model_dir))


# --- 2. GGUF -------------------------------------------------------------------------------


def test_gguf_streams_to_the_same_model_as_the_hf_dir(toolkit_cli, fake_gguf_file, exports,
                                                      fake_model_dir, prompt, tmp_path):
    """The GGUF fixture holds fake-llama's weights in fp32 with llama.cpp's Q/K row order:
    read lazily and un-permuted, it must give the HF directory's logits."""
    result, report = _export(toolkit_cli, fake_gguf_file, tmp_path / "g.onnx",
                             "--engine", "streaming")
    _passed(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.onnx", "g.onnx.data"]
    _assert_same_logits(tmp_path / "g.onnx", exports["hf", "streaming"][0] / "m.onnx",
                        prompt, _cache_shape(fake_model_dir))


# --- 3. auto -------------------------------------------------------------------------------


def test_auto_streams_above_the_memory_budget(toolkit_cli, fake_model_dir, tmp_path):
    out = tmp_path / "m.onnx"
    result = toolkit_cli("export", "onnx", "--model", fake_model_dir, "--out", out,
                         "--memory-budget", "0.001", "--max-context", "48",
                         "--new-tokens", "8")
    assert result.code == 0, result.err
    assert STREAMING_WORDS in result.out
    assert f"exporting {fake_model_dir} to onnx (max context 48, {STREAMING_WORDS})" \
        in result.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_auto_stays_in_memory_within_the_budget(toolkit_cli, fake_model_dir, tmp_path):
    out = tmp_path / "m.onnx"
    result = toolkit_cli("export", "onnx", "--model", fake_model_dir, "--out", out,
                         "--memory-budget", "1000", "--max-context", "48",
                         "--new-tokens", "8")
    assert result.code == 0, result.err
    assert STREAMING_WORDS not in result.out
    assert f"exporting {fake_model_dir} to onnx (max context 48)" in result.out
    # The in-memory writer keeps a model this small inside the graph.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- 4. one-line refusals, nothing written ------------------------------------------------


@pytest.mark.parametrize("flags", [
    pytest.param(["--engine", "streaming"], marks=pytest.mark.slow),
    ["--memory-budget", "0.001"]])
def test_tflite_streams_too(toolkit_cli, fake_model_dir, tmp_path, flags):
    """Every target now reads a checkpoint lazily (tflite chunk by chunk,
    tests/export/test_litert_chunks.py): a small float model is one chunk, OUT itself."""
    result = toolkit_cli("export", "tflite", "--model", fake_model_dir, "--out",
                         tmp_path / "m.tflite", "--prefill-tokens", "8", *flags, *EXPORT)
    assert result.code == 0, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


def test_a_model_only_in_memory_cannot_stream(toolkit_cli, tmp_path):
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--out",
                         tmp_path / "m.onnx", "--engine", "streaming", *EXPORT)
    _refused(result, "fake-llama", "exists only in memory", "use --engine memory")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("engine", ["auto", "memory"])
@pytest.mark.parametrize("budget", ["-1", "0", "nan"])
def test_a_bad_memory_budget_is_refused(toolkit_cli, fake_model_dir, tmp_path, engine,
                                        budget):
    result = toolkit_cli("export", "onnx", "--model", fake_model_dir, "--out",
                         tmp_path / "m.onnx", "--engine", engine, "--memory-budget", budget,
                         *EXPORT)
    _refused(result, "--memory-budget", "must be a positive number of GB")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_memory_budget_is_refused_with_engine_streaming(toolkit_cli, fake_model_dir,
                                                              tmp_path):
    result = toolkit_cli("export", "onnx", "--model", fake_model_dir, "--out",
                         tmp_path / "m.onnx", "--engine", "streaming", "--memory-budget",
                         "-1", *EXPORT)
    _refused(result, "--memory-budget", "must be a positive number of GB")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_out_needs_overwrite(toolkit_cli, fake_model_dir, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"old graph")
    (tmp_path / "m.onnx.data").write_bytes(b"old data")
    before = _contents(tmp_path)
    result = toolkit_cli("export", "onnx", "--model", fake_model_dir, "--out",
                         tmp_path / "m.onnx", "--engine", "streaming", *EXPORT)
    _refused(result, "exists", "pass --overwrite")
    assert _contents(tmp_path) == before


def test_an_existing_data_file_needs_overwrite(toolkit_cli, fake_model_dir, tmp_path):
    (tmp_path / "m.onnx.data").write_bytes(b"someone else's data")
    result = toolkit_cli("export", "onnx", "--model", fake_model_dir, "--out",
                         tmp_path / "m.onnx", "--engine", "streaming", *EXPORT)
    assert (tmp_path / "m.onnx.data").read_bytes() == b"someone else's data"
    _refused(result, "m.onnx.data", "--overwrite")


def _copy_without(fake_model_dir, tmp_path, sharded: bool) -> tuple[Path, str]:
    """A copy of the fake HF dir (re-saved in two or more shards when `sharded`) with one
    weight file deleted; (copy, the deleted file's name)."""
    copy = tmp_path / "broken"
    if sharded:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(fake_model_dir)
        model.save_pretrained(copy, safe_serialization=True, max_shard_size="150KB")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(fake_model_dir / name, copy / name)
        shards = sorted(copy.glob("model-*.safetensors"))
        assert len(shards) >= 2 and (copy / "model.safetensors.index.json").is_file()
        gone = shards[-1]
    else:
        shutil.copytree(fake_model_dir, copy)
        gone = copy / "model.safetensors"
    gone.unlink()
    return copy, gone.name


def test_a_shard_missing_from_a_sharded_checkpoint(toolkit_cli, fake_model_dir, tmp_path):
    copy, gone = _copy_without(fake_model_dir, tmp_path, sharded=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = toolkit_cli("export", "onnx", "--model", copy, "--out", out_dir / "m.onnx",
                         "--engine", "streaming", *EXPORT)
    _refused(result, "missing", gone, "restore the shard")
    assert list(out_dir.iterdir()) == []


def test_the_only_weight_file_missing(toolkit_cli, fake_model_dir, tmp_path):
    copy, gone = _copy_without(fake_model_dir, tmp_path, sharded=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = toolkit_cli("export", "onnx", "--model", copy, "--out", out_dir / "m.onnx",
                         "--engine", "streaming", *EXPORT)
    _refused(result, os.fspath(copy), gone)
    assert list(out_dir.iterdir()) == []


def test_the_only_weight_file_missing_is_named_plainly(toolkit_cli, fake_model_dir, tmp_path):
    copy, _ = _copy_without(fake_model_dir, tmp_path, sharded=False)
    result = toolkit_cli("export", "onnx", "--model", copy, "--out", tmp_path / "m.onnx",
                         "--engine", "streaming", *EXPORT)
    err = _refused(result)
    assert "holds  but" not in err


# --- 5. paths ------------------------------------------------------------------------------


def test_relative_paths_from_another_directory_with_spaces_and_unicode(fake_model_dir,
                                                                      tmp_path):
    """A real process in a working directory of its own: --model and --out relative to it,
    the output folder named with a space and non-ASCII letters (made by the export)."""
    shutil.copytree(fake_model_dir, tmp_path / "models" / "fake llama")
    work = tmp_path / "work"
    work.mkdir()
    out = Path("exports", "über modèle 模型", "m.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "toolkit", "export", "onnx", "--model",
         os.path.join("..", "models", "fake llama"), "--out", os.fspath(out),
         "--engine", "streaming", "--json", "r.json", *EXPORT],
        cwd=work, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr
    folder = work / out.parent
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data"]
    report = json.loads((work / "r.json").read_text(encoding="utf-8"))
    _passed(report)
    assert report["path"] == os.fspath(work / out)  # made absolute, in the user's cwd
    assert report["source"] == os.path.join("..", "models", "fake llama")
    for elsewhere in (work, tmp_path, Path.cwd()):  # nothing beside the cwd's own folder
        assert not list(elsewhere.glob("m.onnx*"))
    assert not (tmp_path / "exports").exists() and not (Path.cwd() / "exports").exists()


def test_overwrite_replaces_the_graph_and_its_data(toolkit_cli, fake_model_dir, gptq4,
                                                   exports, tmp_path):
    """A float export replaced by the GPTQ one: both files become byte for byte what a
    fresh streamed export of the artifact writes, and nothing else is left."""
    out = tmp_path / "m.onnx"
    _export(toolkit_cli, fake_model_dir, out, "--engine", "streaming")
    float_files = _contents(tmp_path)
    _, report = _export(toolkit_cli, gptq4, out, "--engine", "streaming", "--overwrite")
    _passed(report)
    fresh = _contents(exports["gptq4", "streaming"][0])
    now = _contents(tmp_path)
    assert sorted(now) == ["m.json", "m.onnx", "m.onnx.data"]
    assert now["m.onnx"] == fresh["m.onnx"] and now["m.onnx.data"] == fresh["m.onnx.data"]
    assert now["m.onnx.data"] != float_files["m.onnx.data"]


def test_overwrite_in_memory_leaves_no_stale_data_file(toolkit_cli, fake_model_dir,
                                                       tmp_path):
    out = tmp_path / "m.onnx"
    _export(toolkit_cli, fake_model_dir, out, "--engine", "streaming")
    _export(toolkit_cli, fake_model_dir, out, "--engine", "memory", "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]


# --- 6. disk full while writing the external data ------------------------------------------


def _disk_full_after(monkeypatch, calls_before_failure: int) -> list[int]:
    """ExternalDataWriter.add_chunks (every tensor written to the data file goes through
    it) raising ENOSPC on call number `calls_before_failure + 1`; the list of calls made
    (to check the failure really came mid-file)."""
    from export.onnx.external_data import ExternalDataWriter

    real = ExternalDataWriter.add_chunks
    calls: list[int] = []

    def add_chunks(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > calls_before_failure:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ExternalDataWriter, "add_chunks", add_chunks)
    return calls


@pytest.mark.parametrize("earlier", [False, True], ids=["empty", "earlier-export"])
@pytest.mark.parametrize("model", ["gptq4", "float"])
def test_disk_full_while_writing_the_data_leaves_the_destination_as_it_was(
        toolkit_cli, fake_model_dir, gptq4, tmp_path, monkeypatch, earlier, model):
    out = tmp_path / "m.onnx"
    if earlier:
        _export(toolkit_cli, fake_model_dir, out, "--engine", "streaming")
    before = _contents(tmp_path)
    calls = _disk_full_after(monkeypatch, 3)
    source = gptq4 if model == "gptq4" else fake_model_dir
    result = toolkit_cli("export", "onnx", "--model", source, "--out", out, "--engine",
                         "streaming", "--overwrite", *EXPORT)
    _refused(result, f"while writing --out {out}: No space left on device",
             "free space on that disk")
    assert len(calls) == 4  # three tensors written, the fourth failed, nothing after it
    assert _contents(tmp_path) == before  # no staging folder, no .onnx/.data, old intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_real_write_limit_mid_data_file_exits_2_with_nothing_left(fake_model_dir,
                                                                      tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past 128 KB (EFBIG), as a full disk
    refuses them: the fake model's data file (~360 KB) hits it while its tensors stream."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (131072, 131072))\n"
        "from toolkit.cli import main\n"
        f"sys.exit(main(['export', 'onnx', '--model', {str(fake_model_dir)!r}, '--out', "
        f"{str(out_dir / 'm.onnx')!r}, '--engine', 'streaming', '--max-context', '48', "
        "'--new-tokens', '4', '--quiet']))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "File too large" in lines[0], result.stderr
    assert list(out_dir.iterdir()) == []  # no file, no data, no staging folder
