"""The synthetic checkpoint writer on the tiny shapes: what transformers and the project's
loader read back, byte-identity across runs and shard sizes, the value statistics, the
tokenizer, atomic placement, and memory far below the model's size."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import models
from models.errors import ModelError
from models.large_shapes import shape_named
from models.synthetic_checkpoint import (
    INDEX_FILE,
    planned_tensors,
    tensor_seed,
    write_synthetic_checkpoint,
)

SMALL_SHARDS = 100_000  # tiny-llama-test in bf16: a 6.3 MB embedding shard, 73 KB blocks


@pytest.fixture(scope="session")
def needs_tokenizer():
    """The tokenizer comes from the default model's GGUF: skip where it is not installed."""
    from models.synthetic_tokenizer import smollm2_tokenizer_dir

    try:
        return smollm2_tokenizer_dir()
    except ModelError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, needs_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny-llama"
    return write_synthetic_checkpoint(shape_named("tiny-llama-test"), out,
                                      max_shard_bytes=SMALL_SHARDS)


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory, needs_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny-mistral"
    return write_synthetic_checkpoint(shape_named("tiny-mistral-test"), out,
                                      dtype=torch.float32, seed=3)


def stored_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(directory.glob("model-*.safetensors")):
        with safe_open(shard, "pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    return tensors


def tensor_bytes(directory: Path) -> dict[str, bytes]:
    return {name: t.contiguous().view(torch.uint8).numpy().tobytes()
            for name, t in stored_tensors(directory).items()}


def file_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


def test_layout_is_hugging_face_sharded(llama_dir):
    shape = shape_named("tiny-llama-test")
    index = json.loads((llama_dir / INDEX_FILE).read_text(encoding="utf-8"))
    shards = sorted(p.name for p in llama_dir.glob("model-*.safetensors"))
    count = len(shards)
    assert count > 2
    assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert set(index["weight_map"].values()) == set(shards)
    tensors = stored_tensors(llama_dir)
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in tensors.values()) \
        == shape.param_count() * 2
    for shard in shards:  # each shard within the limit unless it holds one big tensor
        with safe_open(llama_dir / shard, "pt") as handle:
            names = list(handle.keys())
            size = sum(handle.get_tensor(n).numel() * 2 for n in names)
        assert size <= SMALL_SHARDS or len(names) == 1
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{part}.weight" for i in range(shape.layers) for part in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
            "post_attention_layernorm")}
    assert set(tensors) == expected  # tied: no lm_head.weight
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    for name in ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "synthetic.json"):
        assert (llama_dir / name).is_file(), name


def test_untied_shape_has_a_head(mistral_dir):
    tensors = stored_tensors(mistral_dir)
    assert tensors["lm_head.weight"].shape == (shape_named("tiny-mistral-test").vocab, 64)
    assert tensors["lm_head.weight"].dtype == torch.float32
    assert len(list(mistral_dir.glob("model-*.safetensors"))) == 1


@pytest.mark.parametrize("fixture", ["llama_dir", "mistral_dir"])
def test_project_loader_and_transformers_read_the_same_weights(fixture, request):
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = request.getfixturevalue(fixture)
    shape = shape_named("tiny-llama-test" if fixture == "llama_dir" else "tiny-mistral-test")
    config = AutoConfig.from_pretrained(directory)
    assert config.model_type == shape.architecture
    loaded = models.load_model(str(directory))
    assert sum(p.numel() for p in loaded.module.parameters()) == shape.param_count()
    plain = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    stored = stored_tensors(directory)
    if shape.tied:  # the state_dict names the tied head too
        stored["lm_head.weight"] = stored["model.embed_tokens.weight"]
        assert plain.lm_head.weight is plain.model.embed_tokens.weight
    for name, param in plain.state_dict().items():
        assert torch.equal(param, stored[name].float()), name
    for name, param in loaded.module.state_dict().items():
        assert torch.equal(param, stored[name].float()), name


@pytest.mark.parametrize("fixture", ["llama_dir", "mistral_dir"])
def test_forward_gives_finite_varied_logits(fixture, request):
    loaded = models.load_model(str(request.getfixturevalue(fixture)))
    ids = loaded.tokenizer("The quick brown fox jumps over the lazy dog.",
                           return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.module(ids).logits
    assert torch.isfinite(logits).all()
    # Tied head on unit-RMS hidden states: logits std ~ 0.02 * sqrt(hidden) = 0.16.
    assert 0.05 < logits.std().item() < 1.0
    assert len(set(logits.argmax(-1).flatten().tolist())) > 1  # not one token everywhere


def test_values_follow_the_documented_init(llama_dir):
    shape = shape_named("tiny-llama-test")
    tensors = {n: t.float() for n, t in stored_tensors(llama_dir).items()}
    residual = 0.02 / math.sqrt(2 * shape.layers)
    assert tensors["model.embed_tokens.weight"].std().item() == pytest.approx(0.02, rel=0.01)
    assert tensors["model.embed_tokens.weight"].mean().item() == pytest.approx(0, abs=1e-4)
    down = torch.cat([tensors[f"model.layers.{i}.mlp.down_proj.weight"].flatten()
                      for i in range(shape.layers)])
    assert down.std().item() == pytest.approx(residual, rel=0.02)
    assert torch.equal(tensors["model.norm.weight"], torch.ones(shape.hidden))
    assert torch.equal(tensors["model.layers.2.input_layernorm.weight"], torch.ones(64))
    # Each tensor has its own stream: no two tensors of the same shape are equal.
    assert not torch.equal(tensors["model.layers.0.mlp.up_proj.weight"],
                           tensors["model.layers.0.mlp.gate_proj.weight"])


def test_bytes_identical_across_runs_and_shard_sizes(llama_dir, tmp_path):
    again = write_synthetic_checkpoint(shape_named("tiny-llama-test"), tmp_path / "again",
                                       max_shard_bytes=SMALL_SHARDS)
    assert file_digests(again) == file_digests(llama_dir)
    one = write_synthetic_checkpoint(shape_named("tiny-llama-test"), tmp_path / "one")
    assert len(list(one.glob("model-*.safetensors"))) == 1
    assert tensor_bytes(one) == tensor_bytes(llama_dir)


def test_seed_and_dtype(llama_dir, tmp_path):
    shape = shape_named("tiny-llama-test")
    other = write_synthetic_checkpoint(shape, tmp_path / "seed1", seed=1, layers=1)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(stored_tensors(other)[name], stored_tensors(llama_dir)[name])
    fp32 = write_synthetic_checkpoint(shape, tmp_path / "fp32", dtype=torch.float32, layers=1)
    # fp32 holds the draws; bf16 is their rounding.
    assert torch.equal(stored_tensors(fp32)[name].to(torch.bfloat16),
                       stored_tensors(llama_dir)[name])
    assert json.loads((fp32 / "config.json").read_text())["torch_dtype"] == "float32"
    assert json.loads((fp32 / "config.json").read_text())["num_hidden_layers"] == 1
    assert tensor_seed(0, "a") != tensor_seed(0, "b") != tensor_seed(1, "a")


def test_tokenizer_ids_match_the_config(llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    config = json.loads((llama_dir / "config.json").read_text())
    generation = json.loads((llama_dir / "generation_config.json").read_text())
    assert len(tokenizer) == config["vocab_size"] == 49152
    assert tokenizer.bos_token_id == config["bos_token_id"] == generation["bos_token_id"] == 1
    assert tokenizer.eos_token_id == config["eos_token_id"] == generation["eos_token_id"] == 2


def test_smaller_vocab_gets_a_cut_tokenizer(tmp_path, needs_tokenizer):
    """Llama 2 / Mistral have 32000 ids: the tokenizer must never emit one beyond."""
    from transformers import AutoTokenizer

    shape = dataclasses.replace(shape_named("tiny-mistral-test"), name="tiny-32k",
                                vocab=32000, layers=1)
    out = write_synthetic_checkpoint(shape, tmp_path / "v32k")
    full = AutoTokenizer.from_pretrained(needs_tokenizer)
    cut = AutoTokenizer.from_pretrained(out)
    assert len(cut) == 32000
    text = "Zürich's naïve café served 12,345 crème brûlées; 東京 ✓ " * 3
    ids = cut(text, add_special_tokens=False)["input_ids"]
    assert max(ids) < 32000 and cut.decode(ids) == text
    assert max(full(text, add_special_tokens=False)["input_ids"]) >= 32000  # the test bites
    plain = "the cat sat on the mat"  # frequent merges survive: same ids as the full one
    assert cut(plain)["input_ids"] == full(plain)["input_ids"]
    assert (cut.bos_token_id, cut.eos_token_id) == (1, 2)
    loaded = models.load_model(str(out))
    with torch.no_grad():
        assert torch.isfinite(loaded.module(torch.tensor([ids])).logits).all()


def test_existing_output_is_refused_then_replaced(llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ModelError, match="already exists"):
        write_synthetic_checkpoint(shape_named("tiny-llama-test"), out, layers=1)
    assert (out / "keep.txt").is_file()
    write_synthetic_checkpoint(shape_named("tiny-llama-test"), out, layers=1, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / INDEX_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


def test_failure_leaves_nothing(tmp_path, monkeypatch, needs_tokenizer):
    import models.synthetic_checkpoint as synth

    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    real = synth._write_shard
    monkeypatch.setattr(synth, "_write_shard", fail_on_second)
    with pytest.raises(OSError):
        write_synthetic_checkpoint(shape_named("tiny-llama-test"), tmp_path / "out",
                                   max_shard_bytes=SMALL_SHARDS)
    assert list(tmp_path.iterdir()) == []


def test_progress_reaches_the_total(tmp_path, needs_tokenizer):
    seen: list[tuple[int, int]] = []
    shape = shape_named("tiny-mistral-test")
    write_synthetic_checkpoint(shape, tmp_path / "p", progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == seen[-1][1] == shape.param_count() * 2


def test_plan_follows_block_order():
    names = [t.name for t in planned_tensors(shape_named("tiny-mistral-test"))]
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    firsts = [names.index(f"model.layers.{i}.input_layernorm.weight") for i in range(4)]
    assert firsts == sorted(firsts)


_MEMORY_PROBE = textwrap.dedent("""
    import dataclasses, resource, sys, torch
    from pathlib import Path
    from models.large_shapes import shape_named
    from models.synthetic_checkpoint import write_synthetic_checkpoint
    # 50M parameters, 201 MB in float32 (two 49152 x 512 embedding tables).
    shape = dataclasses.replace(shape_named("tiny-mistral-test"), hidden=512,
                                intermediate=1024, heads=8, kv_heads=4, layers=2)
    # Warm-up on a 3 MB model: imports, tokenizer copy, one chunk of the allocator.
    write_synthetic_checkpoint(shape_named("tiny-llama-test"), Path(sys.argv[1]) / "warm",
                               layers=1, dtype=torch.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    write_synthetic_checkpoint(shape, Path(sys.argv[1]) / "big", dtype=torch.float32,
                               max_shard_bytes=50_000_000)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(shape.param_count() * 4, (after - before) * 1024)
""")


def test_peak_memory_stays_far_below_the_model(tmp_path, needs_tokenizer):
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path)],
                            capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    model_bytes, growth = map(int, result.stdout.split())
    assert model_bytes > 200e6
    assert growth < model_bytes / 4, (growth, model_bytes)
    shards = list((tmp_path / "big").glob("model-*.safetensors"))
    # Each 101 MB table alone (larger than a shard), the two 9.4 MB blocks together.
    assert len(shards) == 3
