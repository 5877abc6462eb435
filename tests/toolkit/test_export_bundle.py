"""`toolkit export TARGET --model M --bundle DIR`: an app-ready folder read back with
export.bundle_read alone (onnxruntime or LiteRT + the `tokenizers` library) must give
the greedy tokens the export verified; every file is checked against its SHA-256; an
existing DIR, --out with --bundle, and a failed verification are refused in one line
with nothing written.

The tokens are also recomputed here without the key/value cache (the whole sequence
from an empty cache at every step, straight through onnxruntime), so the bundle's
cached generator is checked against an independent run of the same file."""

from __future__ import annotations

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
pytest.importorskip("tokenizers")
MAX_CONTEXT = 48
EXPORT = ["--max-context", str(MAX_CONTEXT), "--new-tokens", "8", "--quiet"]
GPTQ4 = ["--method", "gptq", "--bits", "4", "--group-size", "32"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]


def _bundle(toolkit_cli, target: str, model, bundle: Path, *extra) -> dict:
    """Export to `bundle` with --json beside it; the report dict."""
    report = bundle.with_name(bundle.name + ".json")
    result = toolkit_cli("export", target, "--model", model, "--bundle", bundle,
                         "--json", report, *EXPORT, *extra)
    assert result.code == 0, result.err
    return json.loads(report.read_text(encoding="utf-8"))


def _refused(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.err)
    assert len(result.err_lines) == 1, result.err
    for needle in needles:
        assert needle in result.err, (needle, result.err)


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir())}


def _uncached_greedy(model: Path, prompt: list[int], new_tokens: int,
                     signature: dict) -> list[int]:
    """Greedy tokens with the whole sequence re-run from an empty cache at every step:
    no cache is carried between calls, unlike the generator under test; a plain
    `session.run` fed by the manifest's tensor names (no buffer binding)."""
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(model), providers=["CPUExecutionProvider"])
    empty = {t["name"]: np.zeros(t["shape"], dtype=t["dtype"]) for t in signature["inputs"]
             if t["role"] in ("past_keys", "past_values")}
    logits_name = next(t["name"] for t in signature["outputs"] if t["role"] == "logits")
    sequence = list(prompt)
    for _ in range(new_tokens):
        logits = session.run([logits_name], {"input_ids": np.asarray([sequence], dtype=np.int64),
                                             "position": np.zeros(1, dtype=np.int64), **empty})[0]
        sequence.append(int(logits[0, -1].argmax()))
    return sequence[len(prompt):]


@pytest.fixture(scope="module")
def onnx_bundle(toolkit_cli, tmp_path_factory) -> tuple[Path, dict]:
    bundle = tmp_path_factory.mktemp("bundle") / "fake"
    return bundle, _bundle(toolkit_cli, "onnx", "fake-llama", bundle)


@pytest.fixture(scope="module")
def gptq_artifact(toolkit_cli, fake_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle-gptq") / "gptq4"
    result = toolkit_cli("compress", "--model", fake_model_dir, *GPTQ4, "--out", out, *SMALL)
    assert result.code == 0, result.err
    return out


def test_onnx_bundle_generates_the_verified_tokens_from_the_bundle_alone(onnx_bundle):
    from export.bundle_read import generate_ids, open_bundle, self_check

    path, report = onnx_bundle
    assert report["verdict"] == "passed" and report["path"] == os.fspath(path)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["bundle.json", "generation_config.json", "model.onnx", *TOKENIZER_FILES])
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    bundle = open_bundle(path)
    manifest = bundle.manifest
    assert (manifest["format"], manifest["version"], manifest["target"],
            manifest["runtime"]) == ("edge-toolkit-bundle", 1, "onnx", "onnxruntime")
    # fake-llama: 2 layers, 2 key/value heads of 16, 259 byte-level tokens.
    assert manifest["cache"]["shape"] == [2, 2, MAX_CONTEXT, 16]
    assert (manifest["max_context"], manifest["vocab_size"]) == (MAX_CONTEXT, 259)
    assert manifest["inputs"][0] == {"name": "input_ids", "dtype": "int64",
                                     "shape": [1, "tokens"]}
    assert manifest["outputs"][0]["shape"] == [1, "tokens", 259]
    assert manifest["prefill"]["tokens"] is None
    assert manifest["special_tokens"] == {"bos": {"id": 1, "text": "<s>"},
                                          "pad": {"id": 2, "text": "</s>"},
                                          "unk": {"id": 0, "text": "<unk>"}, "eos_ids": [2]}
    generation = json.loads((path / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    for name, entry in manifest["files"].items():  # recomputed here, independently
        data = (path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert sorted(manifest["files"]) == sorted(p.name for p in path.iterdir()
                                               if p.name != "bundle.json")

    # The tokenizers library encodes the export's prompt to the ids the export used.
    prompt = bundle.tokenizer().encode(manifest["verification"]["prompt"],
                                       add_special_tokens=False).ids
    assert prompt == manifest["verification"]["prompt_ids"]
    assert len(prompt) == report["verification"]["prompt_tokens"]
    expected = report["verification"]["runtime_tokens"]
    assert generate_ids(bundle, prompt, 8) == expected == manifest["verification"]["tokens"]
    assert _uncached_greedy(bundle.model_path, prompt, 8, manifest["signatures"]["main"]) \
        == expected
    assert self_check(bundle) == {"tokenizer_matches": True, "tokens_match": True,
                                  "tokens": expected, "expected": expected}


def test_a_changed_file_fails_its_sha256_in_one_line(onnx_bundle, tmp_path, capsys):
    from export.bundle_read import BundleError, main, open_bundle

    copy = tmp_path / "copy"
    shutil.copytree(onnx_bundle[0], copy)
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx does not match its sha256"):
        open_bundle(copy)
    assert main([os.fspath(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export the bundle again" in err

    (copy / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match=r"tokenizer\.json has 2 bytes, not the"):
        open_bundle(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json is missing"):
        open_bundle(copy)


def test_a_newer_or_foreign_manifest_is_refused(onnx_bundle, tmp_path):
    from export.bundle_read import BundleError, open_bundle

    copy = tmp_path / "copy"
    shutil.copytree(onnx_bundle[0], copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    for change, message in [({"version": 2}, "newer than this reader's 1: upgrade"),
                            ({"format": "other"}, "not an Edge Toolkit bundle manifest"),
                            ({"files": {"../x": {"bytes": 1, "sha256": "0"},
                                        "model.onnx": {}, "tokenizer.json": {}}},
                             "outside the bundle")]:
        (copy / "bundle.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(BundleError, match=message):
            open_bundle(copy)


def test_quantized_artifact_bundles_in_memory_and_streamed(toolkit_cli, gptq_artifact,
                                                           tmp_path):
    from export.bundle_read import generate_ids, open_bundle

    reports, bundles = {}, {}
    for engine in ("memory", "streaming"):
        bundles[engine] = tmp_path / engine
        reports[engine] = _bundle(toolkit_cli, "onnx", gptq_artifact, bundles[engine],
                                  "--engine", engine)
    streamed = open_bundle(bundles["streaming"])
    assert streamed.manifest["model"]["files"] == ["model.onnx", "model.onnx.data"]
    assert "model.onnx.data" in streamed.manifest["files"]
    # The artifact's own generation config travels as it is.
    assert ((bundles["streaming"] / "generation_config.json").read_bytes()
            == (gptq_artifact / "generation_config.json").read_bytes())
    for engine, report in reports.items():
        bundle = open_bundle(bundles[engine])
        quantization = bundle.manifest["quantization"]
        assert quantization["carried"] == report["carried"] == {"MatMulNBits 4-bit, block 32": 14}
        assert quantization["lost"] == [] and quantization["verdict"] == "passed"
        check = bundle.manifest["verification"]
        assert generate_ids(bundle, check["prompt_ids"], 8) == \
            report["verification"]["runtime_tokens"] == check["tokens"]


def test_existing_dir_is_refused_without_overwrite_and_replaced_with_it(toolkit_cli,
                                                                        onnx_bundle,
                                                                        tmp_path):
    existing = tmp_path / "b"
    shutil.copytree(onnx_bundle[0], existing)
    before = _contents(existing)
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--bundle", existing,
                         *EXPORT)
    _refused(result, "exists: pass --overwrite")
    assert _contents(existing) == before

    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--bundle", stranger,
                         "--overwrite", *EXPORT)
    _refused(result, "holds no bundle.json", "choose a new path")
    assert _contents(stranger) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}

    (existing / "stale.txt").write_text("from before")
    _bundle(toolkit_cli, "onnx", "fake-llama", existing, "--overwrite")
    assert "stale.txt" not in _contents(existing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.json", "notes"]


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "{tmp}/m.onnx", "--bundle", "{tmp}/b"], "not allowed with argument"),
    ([], "one of the arguments --out --bundle is required"),
    (["--bundle", "{tmp}/b", "--json", "{tmp}/b/r.json"], "lies in --bundle"),
])
def test_out_and_bundle_are_one_or_the_other(toolkit_cli, tmp_path, args, message):
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", *EXPORT,
                         *[a.format(tmp=tmp_path) for a in args])
    _refused(result, message)
    assert list(tmp_path.iterdir()) == []


def test_targets_a_bundle_cannot_hold_are_refused(tmp_path):
    # Every registered target is bundled today (coreml: test_export_coreml_bundle.py);
    # a target without a bundle reader is refused before any work.
    from export import ExportOptions
    from export.bundle import check_bundle_dir
    from export.errors import ExportError

    with pytest.raises(ExportError, match="--bundle is written for onnx, tflite, coreml"):
        check_bundle_dir("ort", tmp_path / "b", ExportOptions())
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_leaves_no_bundle_and_no_staging(toolkit_cli, tmp_path):
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--bundle",
                         tmp_path / "b", "--rtol", "1e-12", *EXPORT)
    assert result.code == 2 and "nothing was written" in result.err
    assert list(tmp_path.iterdir()) == []


def test_litert_bundle_generates_the_verified_tokens(toolkit_cli, tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    path = tmp_path / "lite"
    report = _bundle(toolkit_cli, "tflite", "fake-llama", path, "--prefill-tokens", "4")
    manifest = json.loads((path / "bundle.json").read_text())
    assert (manifest["runtime"], manifest["model"]["file"]) == ("ai-edge-litert", "model.tflite")
    assert manifest["prefill"] == {**manifest["prefill"], "signature": "prefill",
                                   "decode_signature": "decode", "tokens": 4}
    prefill_ids = manifest["signatures"]["prefill"]["inputs"][0]
    assert (prefill_ids["role"], prefill_ids["dtype"], prefill_ids["shape"]) == \
        ("input_ids", "int32", [1, 4])
    assert manifest["inputs"][0]["shape"] == [1, "tokens"]
    # The interpreter may abort the process hosting it: read the bundle in a child.
    child = subprocess.run([sys.executable, "-m", "export.bundle_read", os.fspath(path),
                            "--check", "--json"], capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["tokens"] == report["verification"]["runtime_tokens"]
    assert result["tokenizer_matches"] and result["tokens_match"]


def test_python_api_bundles_the_chat_template_and_tokenizer_ids(tmp_path):
    """write_bundle on a models.LoadedModel whose tokenizer has a chat template and whose
    module has no generation config: the template file is listed, the config is built
    from the tokenizer's bos/eos/pad ids."""
    import models
    from export import ExportOptions
    from export.bundle import write_bundle
    from export.bundle_read import open_bundle, self_check

    loaded = models.create_model("fake-llama")
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    loaded.tokenizer.chat_template = template
    loaded.module.generation_config = None
    report = write_bundle("onnx", loaded, tmp_path / "api",
                          ExportOptions(max_context=MAX_CONTEXT, new_tokens=4))
    assert report.passed and report.path == os.fspath(tmp_path / "api")
    bundle = open_bundle(tmp_path / "api")
    assert bundle.manifest["tokenizer"]["chat_template"] == "chat_template.jinja"
    assert (tmp_path / "api" / "chat_template.jinja").read_text() == template
    assert "chat_template.jinja" in bundle.manifest["files"]
    assert json.loads((tmp_path / "api" / "generation_config.json").read_text()) == {
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert self_check(bundle)["tokens_match"]


def test_reading_a_bundle_never_imports_transformers(onnx_bundle):
    """An app's reader: a fresh process generates from the bundle without transformers."""
    script = ("import sys; from export.bundle_read import open_bundle, self_check; "
              f"r = self_check(open_bundle({os.fspath(onnx_bundle[0])!r})); "
              "print(r['tokens_match'], 'transformers' in sys.modules)")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["True", "False"]


def test_disk_full_mid_bundle_keeps_the_old_bundle_and_leaves_no_staging(
        toolkit_cli, onnx_bundle, tmp_path, monkeypatch):
    import errno

    import export.bundle

    existing = tmp_path / "b"
    shutil.copytree(onnx_bundle[0], existing)
    before = _contents(existing)

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(folder / "x"))

    monkeypatch.setattr(export.bundle, "files_section", full)
    result = toolkit_cli("export", "onnx", "--model", "fake-llama", "--bundle", existing,
                         "--overwrite", *EXPORT)
    _refused(result, "No space left on device")
    assert _contents(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
