"""Every registered exporter through its one call shape, export_model(target, artifact, out,
options), generated from the registries: each exporter x one fake model per registered
family it accepts (and a `toolkit compress --method rtn` artifact) is written, verified
and moved into place; a relative --out with a space and a non-ASCII character works from
any working directory (the LiteRT verifier runs in a child process elsewhere); what an
export cannot carry is named in the verdict, and require_carried refuses it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import export
import models
from export import ExportOptions, export_model, exporter_names, get_exporter
from export.carried import stage_kinds
from export.errors import ExportError
from export.registry import _EXPORTERS, Exporter, register_exporter
from export.report import ExportReport

SMALL = ["--calib-samples", "4", "--seq-len", "32", "--no-eval", "--quiet"]
LLM_OPTIONS = dict(max_context=32, new_tokens=4, prefill_tokens=4)
# Fakes that exist to test a refusal, not an export (an architecture no exporter takes).
REFUSED = {"fake-gemma": "(1 + w) RMSNorm"}
FAST = "fake-cnn"  # the family whose export takes seconds on every target: the default tier
RUNTIME_MODULE = {"onnx": "onnxruntime", "tflite": "ai_edge_litert", "coreml": "coremltools"}


def one_fake_per_family() -> list[str]:
    chosen: dict[str, str] = {}
    for spec in sorted(models.list_models(), key=lambda s: (s.name != "fake-llama", s.name)):
        if spec.fake and spec.name not in REFUSED:
            chosen.setdefault(spec.family, spec.name)
    return sorted(chosen.values())


def matrix() -> list:
    cases = []
    for target in exporter_names():
        for name in [*one_fake_per_family(), "rtn-artifact"]:
            marks = [] if name == FAST else [pytest.mark.slow]
            cases.append(pytest.param(target, name, id=f"{target}-{name}", marks=marks))
    return cases


@pytest.fixture(scope="module")
def rtn_artifact(toolkit_cli, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rtn") / "rtn4"
    result = toolkit_cli("compress", "--model", "fake-llama", "--method", "rtn", "--bits", "4",
                         "--out", out, *SMALL)
    assert result.code == 0, result.err
    return out


@pytest.mark.parametrize(("target", "name"), matrix())
def test_every_exporter_exports_every_family(target, name, request, tmp_path,
                                             monkeypatch) -> None:
    pytest.importorskip(RUNTIME_MODULE.get(target, "export"))
    source = os.fspath(request.getfixturevalue("rtn_artifact")) if name == "rtn-artifact" \
        else name
    loaded = models.load_model(source)
    exporter = get_exporter(target)
    if not exporter.accepts(loaded):
        pytest.skip(f"{target} does not take {name}")
    monkeypatch.chdir(tmp_path)  # the relative path below must survive the LiteRT child
    out = Path("out dir") / f"modèle {name}{exporter.suffix}"
    report = export_model(target, loaded, out, ExportOptions(**LLM_OPTIONS))
    assert report.verdict == "passed", report.to_dict()
    assert report.path == os.fspath(tmp_path / out) and (tmp_path / out).exists()
    assert [p.name for p in (tmp_path / "out dir").iterdir()] == [out.name]  # no staging
    assert report.target == target and report.runtime == exporter.runtime
    if loaded.quantized:  # the artifact's codes reached the file, every layer of them
        assert sum(report.carried.values()) == len(loaded.quantized) and not report.lost
    data = report.to_dict()
    assert data["verdict"] == "passed" and json.loads(json.dumps(data)) == data


def test_cli_target_choices_come_from_the_registry(toolkit_cli) -> None:
    result = toolkit_cli("export", "--help")
    assert "{" + ",".join(exporter_names()) + "}" in result.out
    assert {"onnx", "tflite", "coreml"} <= set(exporter_names())


@pytest.fixture
def scratch_exporter():
    """A target registered for one test: writes a file whose content says whether it
    "verifies", the smallest exporter the one call shape allows."""

    @register_exporter("scratch")
    class Scratch(Exporter):
        suffix, runtime, kinds = ".bin", "none", ("llm", "vision")

        def export(self, artifact, out, options) -> ExportReport:
            out.write_bytes(artifact.payload)
            if artifact.payload == b"raise":
                raise ExportError("scratch failed half way")
            return ExportReport(self.target, self.runtime, "fake", len(artifact.payload), 0,
                                verification={"passed": artifact.payload != b"bad"},
                                lost=["pruned zeros"] if artifact.payload == b"lossy" else [])

    yield Scratch
    _EXPORTERS.pop("scratch")


class _Artifact:
    vision, tokenizer, source = None, None, "fake"

    def __init__(self, payload: bytes):
        self.payload = payload


@pytest.mark.parametrize(("payload", "require", "verdict"), [
    (b"good", False, "passed"), (b"bad", False, "failed"), (b"raise", False, None),
    (b"lossy", False, "passed, but carried none of: pruned zeros"), (b"lossy", True, None)])
def test_only_a_file_that_passed_replaces_the_output(scratch_exporter, tmp_path, payload,
                                                    require, verdict) -> None:
    out = tmp_path / "m.bin"
    out.write_bytes(b"old")
    options = ExportOptions(overwrite=True, require_carried=require)
    if verdict is None:
        with pytest.raises(ExportError, match="half way|require-carried"):
            export_model("scratch", _Artifact(payload), out, options)
    else:
        report = export_model("scratch", _Artifact(payload), out, options)
        assert report.verdict == verdict
    replaced = verdict is not None and verdict.startswith("passed")
    assert out.read_bytes() == (payload if replaced else b"old")
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]  # the staging folder is gone


@pytest.mark.parametrize(("out", "overwrite", "message"), [
    ("m.onnx", False, "must end in .bin for target scratch"),
    ("exists.bin", False, "exists: pass --overwrite"),
])
def test_bad_output_is_refused_before_any_work(scratch_exporter, tmp_path, out, overwrite,
                                               message) -> None:
    (tmp_path / "exists.bin").write_bytes(b"x")
    with pytest.raises(ExportError, match=message):
        export_model("scratch", _Artifact(b"good"), tmp_path / out,
                     ExportOptions(overwrite=overwrite))
    assert (tmp_path / "exists.bin").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.bin"]


def test_unknown_target_and_bad_options_name_the_fix() -> None:
    with pytest.raises(ExportError, match="choose one of .*onnx"):
        export.get_exporter("tensorrt")
    with pytest.raises(ExportError, match=r"--rtol 2 must lie in \(0, 1\)"):
        ExportOptions(rtol=2)
    assert ExportOptions(int8=True).rtol == 0.05 and ExportOptions().rtol == 1e-3


def test_stage_kinds_from_llm_and_vision_manifests(rtn_artifact) -> None:
    manifest = json.loads((rtn_artifact / "toolkit.json").read_text())
    assert stage_kinds(manifest) == {"quantize"}
    assert stage_kinds({"recipe": {"stages": [{"method": "wanda"}]}}) == {"prune"}
    assert stage_kinds({"method": {"method": "channel-prune"},
                        "pruning": {"kind": "channel-prune"}}) == {"channel-prune"}
    assert stage_kinds(None) == set()


@pytest.fixture(scope="module")
def palettized_artifact(toolkit_cli, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pal") / "palettize4"
    result = toolkit_cli("compress", "--model", "fake-llama", "--method", "palettize",
                         "--bits", "4", "--group-rows", "16", "--out", out, *SMALL)
    assert result.code == 0, result.err
    return out


def test_require_carried_refuses_palettes_litert_only_maps(
        toolkit_cli, palettized_artifact, tmp_path, monkeypatch) -> None:
    pytest.importorskip("litert_torch")
    monkeypatch.chdir(tmp_path)
    result = toolkit_cli("export", "tflite", "--model", palettized_artifact, "--out",
                         "out dir/pålette m.tflite", "--require-carried", "--no-verify",
                         "--max-context", "16", "--prefill-tokens", "4", "--quiet")
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "is palettized (4-bit lookup table), which LiteRT carries only mapped" in result.err
    assert "--require-carried" in result.err and "nothing was written" in result.err
    assert not any(Path("out dir").iterdir())
