"""`toolkit export coreml --model M --bundle DIR`: the manifest must describe the package
as Core ML sees it and list every file inside it, checked here independently of the
export code:

- inputs / outputs against the package spec read here with coremltools;
- every file under model.mlpackage/ found by os.walk and hashed here with hashlib;
- the sample outputs against the registered PyTorch model on the sample pixels,
  normalised here by hand ((x / 255 - mean) / std), and the V-MoE's expert choice
  against the model's own routing (Core ML cannot run here, so the sample is PyTorch's);
- an LLM bundle's reference tokens against transformers' own greedy generate().

Also: the reader's --check passes on the files and says Core ML did not run, a changed
byte inside the package fails its sha256 in one line, an existing DIR is refused with
nothing written, and the vision manifest has the keys of the ONNX vision bundle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.apps.coreml_fixtures import coreml_bundle, run_cli

ct = pytest.importorskip("coremltools")


@pytest.fixture(scope="module")
def bundles_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("coreml-bundles")


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))


def _spec(package: Path):
    return ct.models.MLModel(os.fspath(package), skip_model_load=True).get_spec()


def _walk(folder: Path) -> dict[str, Path]:
    """{posix path relative to folder's parent: path} for every file under `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            found[path.relative_to(folder.parent).as_posix()] = path
    return found


def _raw(bundle: Path, entry: dict) -> np.ndarray:
    data = np.fromfile(bundle / entry["file"], dtype=np.dtype(entry["dtype"]).newbyteorder("<"))
    return data.reshape(entry["shape"])


def test_vision_manifest_has_the_onnx_vision_bundles_keys(bundles_dir):
    from tests.web_fixtures import vision_bundle

    pytest.importorskip("onnxruntime")
    coreml = _manifest(coreml_bundle(bundles_dir, "fake-vmoe"))
    onnx = _manifest(vision_bundle(bundles_dir, "fake-vmoe", "onnx"))
    assert sorted(coreml) == sorted(onnx)
    for section in ("model", "postprocessing", "experts", "quantization", "sample"):
        assert set(onnx[section]) <= set(coreml[section]), section
    assert set(coreml["experts"]) - set(onnx["experts"]) == {"checked"}
    assert (coreml["target"], coreml["runtime"], coreml["kind"]) == (
        "coreml", "coremltools", "image-classification")
    assert coreml["preprocessing"] == onnx["preprocessing"]  # both NCHW float32
    assert coreml["postprocessing"]["labels"] == onnx["postprocessing"]["labels"]


def test_inputs_and_outputs_are_the_packages_own(bundles_dir):
    bundle = coreml_bundle(bundles_dir, "fake-vmoe")
    manifest = _manifest(bundle)
    spec = _spec(bundle / manifest["model"]["file"]).description
    assert [i["name"] for i in manifest["inputs"]] == [f.name for f in spec.input] == ["pixels"]
    assert manifest["inputs"][0]["shape"] == list(spec.input[0].type.multiArrayType.shape)
    assert [o["name"] for o in manifest["outputs"]] == [f.name for f in spec.output]
    assert [o["role"] for o in manifest["outputs"]] == ["logits", "experts"]
    for described, feature in zip(manifest["outputs"], spec.output, strict=True):
        array = feature.type.multiArrayType
        assert described["shape"] == list(array.shape)
        assert described["dtype"] == {array.FLOAT32: "float32", array.INT32: "int32"}[
            array.dataType]
    assert manifest["postprocessing"]["logits"]["output"] == manifest["outputs"][0]["name"]
    assert manifest["experts"]["output"] == manifest["outputs"][1]["name"]
    assert manifest["model"]["package"] == "mlpackage"
    assert manifest["verification"]["passed"] and manifest["verification"]["ran"] is False


def test_every_file_inside_the_package_is_listed_with_its_sha256(bundles_dir):
    bundle = coreml_bundle(bundles_dir, "fake-vmoe")
    manifest = _manifest(bundle)
    package = _walk(bundle / "model.mlpackage")
    assert "model.mlpackage/Data/com.apple.CoreML/model.mlmodel" in package
    assert sorted(manifest["model"]["files"]) == sorted(package)
    on_disk = {p.relative_to(bundle).as_posix(): p for p in bundle.rglob("*")
               if p.is_file() and p.name != "bundle.json"}
    assert sorted(manifest["files"]) == sorted(on_disk)
    for name, path in on_disk.items():
        data = path.read_bytes()
        assert manifest["files"][name] == {"bytes": len(data),
                                           "sha256": hashlib.sha256(data).hexdigest()}, name


def _pytorch(model: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
    import models

    loaded = models.load_model(model)
    mean = torch.tensor(loaded.vision.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.vision.std).view(1, -1, 1, 1)
    x = (torch.from_numpy(pixels.copy()) / 255 - mean) / std
    with torch.no_grad():
        main = loaded.module(x).numpy()
        if model == "fake-portrait":
            return {"mask": main}
        return {"logits": main, "experts": loaded.module.expert_choice(x).numpy()}


@pytest.mark.parametrize("model", ["fake-vmoe", "fake-portrait"])
def test_the_sample_is_pytorch_on_the_sample_input(bundles_dir, model):
    bundle = coreml_bundle(bundles_dir, model)
    sample = _manifest(bundle)["sample"]
    assert sample["produced_by"] == "PyTorch" and "not a Core ML run" in sample["note"]
    assert (sample["rtol"], sample["judged_on"]) == (1e-3, "max")  # float32 package
    pixels = _raw(bundle, sample["input"])
    assert pixels.dtype == np.float32 and 0 <= pixels.min() and pixels.max() <= 255
    want = _pytorch(model, pixels)
    assert sorted(o["role"] for o in sample["outputs"]) == sorted(want)
    for entry in sample["outputs"]:
        got = _raw(bundle, entry)
        expected = want[entry["role"]].reshape(got.shape)
        if entry["role"] == "experts":
            assert entry["dtype"] == "int32" and np.array_equal(got, expected)
        else:
            assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_reader_checks_the_files_and_says_core_ml_did_not_run(bundles_dir, capsys):
    from export.bundle_read import main

    bundle = coreml_bundle(bundles_dir, "fake-vmoe")
    assert main([os.fspath(bundle), "--check"]) == 0
    out = capsys.readouterr().out
    files = len(_manifest(bundle)["files"])
    assert f"files ok: {files} files match their sha256" in out
    assert "Core ML runs only on macOS" in out
    assert main([os.fspath(bundle), "--check", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["ran"], result["files"]) == (True, False, files)


def test_a_changed_byte_inside_the_package_fails_in_one_line(bundles_dir, tmp_path, capsys):
    from export.bundle_read import main

    copy = tmp_path / "copy"
    shutil.copytree(coreml_bundle(bundles_dir, "fake-vmoe"), copy)
    weights = copy / "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    weights.write_bytes(bytes(data))
    assert main([os.fspath(copy), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights/weight.bin does not match its sha256" in err
    (copy / "model.mlpackage/Manifest.json").unlink()
    assert main([os.fspath(copy), "--check"]) == 2
    assert "model.mlpackage/Manifest.json is missing" in capsys.readouterr().err


def _contents(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_existing_dir_is_refused_and_a_failed_write_keeps_it(bundles_dir, tmp_path,
                                                             monkeypatch):
    import errno

    import export.coreml_bundle

    existing = tmp_path / "b"
    shutil.copytree(coreml_bundle(bundles_dir, "fake-vmoe"), existing)
    before = _contents(existing)
    code, err = run_cli("export", "coreml", "--model", "fake-vmoe", "--bundle", existing,
                        "--quiet")
    assert code == 2 and err.count("\n") == 1 and "exists: pass --overwrite" in err
    assert _contents(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging left

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(folder / "x"))

    monkeypatch.setattr(export.coreml_bundle, "files_section", full)
    code, err = run_cli("export", "coreml", "--model", "fake-vmoe", "--bundle", existing,
                        "--overwrite", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err
    assert _contents(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_sample_limits_follow_the_package_precision():
    from export.coreml_bundle import SAMPLE_LIMITS, _limit
    from export.options import ExportOptions

    assert _limit("float32", ExportOptions()) == (1e-3, "max")
    assert _limit("float16", ExportOptions()) == SAMPLE_LIMITS["float16"]
    assert _limit("float16, weights palettized to 4 bits (k-means per tensor)",
                  ExportOptions()) == SAMPLE_LIMITS["palettized"]
    assert _limit("float16", ExportOptions(rtol=0.02)) == (0.02, "max")


def test_llm_bundle_lists_the_chunks_in_order_with_tokenizer_and_states(bundles_dir):
    from tokenizers import Tokenizer

    import models

    bundle = coreml_bundle(bundles_dir, "fake-llama")
    manifest = _manifest(bundle)
    loaded = models.load_model("fake-llama")
    config = loaded.module.config
    packages = manifest["model"]["packages"]
    assert packages == ["model_chunk1.mlpackage", "model_chunk2.mlpackage"]
    listed = {}
    for name in packages:
        listed.update(_walk(bundle / name))
    assert sorted(manifest["model"]["files"]) == sorted(listed)
    for name, path in listed.items():
        assert manifest["files"][name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    first, last = manifest["chunks"]
    assert (first["input"], first["output"], last["input"], last["output"]) == (
        "input_ids", "hidden_out", "hidden", "logits")
    assert first["layers"][0] == 0 and last["layers"][1] == config.num_hidden_layers - 1
    for chunk in manifest["chunks"]:
        states = {f.name: list(f.type.stateType.arrayType.shape)
                  for f in _spec(bundle / chunk["file"]).description.state}
        assert states == {"keys": chunk["cache"], "values": chunk["cache"]}
    cache = manifest["cache"]
    head_dim = config.hidden_size // config.num_attention_heads
    assert cache["shape"] == [config.num_hidden_layers, config.num_key_value_heads, 48,
                              head_dim]
    assert cache["state"] is True and cache["dtype"] == "float16"
    assert (manifest["max_context"], manifest["vocab_size"]) == (48, config.vocab_size)
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "position"]
    assert manifest["outputs"][0]["shape"] == [1, "tokens", config.vocab_size]
    check = manifest["verification"]
    tokenizer = Tokenizer.from_file(os.fspath(bundle / manifest["tokenizer"]["file"]))
    assert tokenizer.encode(check["prompt"], add_special_tokens=False).ids == check["prompt_ids"]
    ids = torch.tensor([check["prompt_ids"]])
    with torch.no_grad():
        generated = loaded.module.generate(ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=6, do_sample=False,
                                           pad_token_id=0)
    assert check["reference_tokens"] == generated[0, ids.shape[1]:].tolist()
    assert check["tokens"] is None and check["ran"] is False and check["passed"]


def test_llm_bundle_reader_checks_every_package(bundles_dir, tmp_path, capsys):
    from export.bundle_read import main

    bundle = coreml_bundle(bundles_dir, "fake-llama")
    assert main([os.fspath(bundle), "--check"]) == 0
    out = capsys.readouterr().out
    assert "model_chunk1.mlpackage, model_chunk2.mlpackage included" in out
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    spec = copy / "model_chunk2.mlpackage/Data/com.apple.CoreML/model.mlmodel"
    data = bytearray(spec.read_bytes())
    data[-1] ^= 0x01
    spec.write_bytes(bytes(data))
    assert main([os.fspath(copy), "--check"]) == 2
    assert "model_chunk2.mlpackage/Data/com.apple.CoreML/model.mlmodel does not match" in \
        capsys.readouterr().err


def test_streamed_llm_bundle_has_no_reference_tokens_and_says_why(tmp_path):
    """--engine streaming (a checkpoint read one tensor at a time): one package, the
    config's vocab, and no PyTorch tokens (the model is not held in memory to run)."""
    import models

    loaded = models.load_model("fake-llama")
    checkpoint = tmp_path / "hf"
    loaded.module.save_pretrained(checkpoint)
    loaded.tokenizer.save_pretrained(checkpoint)
    bundle = tmp_path / "b"
    code, err = run_cli("export", "coreml", "--model", checkpoint, "--engine", "streaming",
                        "--bundle", bundle, "--max-context", "48", "--new-tokens", "4",
                        "--quiet")
    assert code == 0, err
    manifest = _manifest(bundle)
    assert manifest["model"]["packages"] == ["model.mlpackage"]
    assert manifest["vocab_size"] == loaded.module.config.vocab_size
    check = manifest["verification"]
    assert check["reference_tokens"] is None and "one tensor at a time" in check[
        "reference_note"]
    assert sorted(manifest["model"]["files"]) == sorted(_walk(bundle / "model.mlpackage"))
