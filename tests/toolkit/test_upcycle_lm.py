"""Training an upcycled LM (toolkit/train/upcycle_lm.py), the moe-llm artifact writer
(toolkit/moe_lm_artifact.py) and the `train upcycle` job (toolkit/commands/upcycle_job.py)
on the fake models."""

from __future__ import annotations

import argparse
import copy
import json
import math

import pytest
import torch

from models import create_model, load_model
from models.moe_groups import moe_groups
from models.upcycle import moe_layers, upcycle_llama
from toolkit.artifacts import save_model_artifact
from toolkit.commands import upcycle_job
from toolkit.data import TokenStreams, tokenize_text
from toolkit.errors import UserError
from toolkit.train.upcycle_lm import learning_rate, routing_frequencies, train_upcycled

TEXT = "The quick brown fox jumps over the lazy dog. " * 12


def repeated_text_tokens(tokenizer, rows: int, length: int) -> torch.Tensor:
    ids = tokenize_text(tokenizer, TEXT)
    return torch.stack([ids[i:i + length] for i in range(rows)])


def test_a_few_steps_lower_the_loss_and_leave_the_dense_parts_alone():
    loaded = create_model("fake-llama")
    model = loaded.module
    upcycle_llama(model, 4, 2, seed=0)
    before = copy.deepcopy(model)
    tokens = repeated_text_tokens(loaded.tokenizer, 8, 48)
    record = train_upcycled(model, tokens, steps=25, lr=3e-3, batch_size=4, seed=0)
    losses = record["lm_loss"]
    assert len(losses) == 25 and len(record["balance_loss"]) == 25
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    assert losses[-1] < losses[0] - 0.5
    assert all(0 < b < 4 for b in record["balance_loss"])  # E sum f P; 1 when uniform
    assert record["tokens_seen"] == 25 * 4 * 48 and record["trained"] == "moe"
    assert record["trained_parameters"] == sum(p.numel() for layer in moe_layers(model)
                                               for p in layer.parameters())
    moe_names = {n for n, _ in model.named_parameters() if ".mlp." in n}
    for (name, p), (_, q) in zip(model.named_parameters(), before.named_parameters(),
                                 strict=True):
        assert torch.equal(p, q) == (name not in moe_names), name
        assert p.requires_grad  # restored
    experts = moe_layers(model)[0].gate_proj
    assert not torch.equal(experts[0], experts[1])  # the copies diverged
    assert not model.training
    copy.deepcopy(model)  # no graph tensor left on the blocks


def test_train_all_changes_every_parameter_group():
    loaded = create_model("fake-llama")
    upcycle_llama(loaded.module, 2, 1, seed=0)
    embedding = loaded.module.get_input_embeddings().weight.detach().clone()
    tokens = repeated_text_tokens(loaded.tokenizer, 4, 32)
    record = train_upcycled(loaded.module, tokens, steps=2, lr=1e-3, batch_size=2, seed=0,
                            train_all=True)
    assert record["trained"] == "all"
    assert not torch.equal(loaded.module.get_input_embeddings().weight, embedding)


def test_training_is_seeded():
    runs = []
    for _ in range(2):
        loaded = create_model("fake-moe-llm")
        tokens = repeated_text_tokens(loaded.tokenizer, 6, 24)
        runs.append(train_upcycled(loaded.module, tokens, steps=3, lr=1e-3, batch_size=2,
                                   seed=5)["lm_loss"])
    assert runs[0] == runs[1]


def test_training_refuses_dense_models_and_bad_tokens():
    loaded = create_model("fake-llama")
    tokens = repeated_text_tokens(loaded.tokenizer, 4, 16)
    with pytest.raises(UserError, match="no mixture-of-experts"):
        train_upcycled(loaded.module, tokens, steps=1, lr=1e-3, batch_size=2, seed=0)
    upcycle_llama(loaded.module, 2, 1)
    with pytest.raises(UserError, match="integer ids"):
        train_upcycled(loaded.module, tokens.float(), steps=1, lr=1e-3, batch_size=2, seed=0)
    with pytest.raises(UserError, match="positive"):
        train_upcycled(loaded.module, tokens, steps=0, lr=1e-3, batch_size=2, seed=0)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    steps, peak = 100, 1.0
    assert learning_rate(0, steps, peak) == pytest.approx(0.1)
    assert learning_rate(9, steps, peak) == pytest.approx(1.0)
    assert learning_rate(10, steps, peak) == pytest.approx(1.0)
    middle = 10 + 45
    assert learning_rate(middle, steps, peak) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)
    assert learning_rate(steps, steps, peak) == pytest.approx(0.1)


def test_routing_frequencies_match_an_independent_count():
    loaded = create_model("fake-moe-llm")
    model = loaded.module
    tokens = repeated_text_tokens(loaded.tokenizer, 3, 20)
    shares = routing_frequencies(model, tokens, batch_size=2)
    assert len(shares) == 2 and all(math.isclose(sum(s), 1.0) for s in shares)
    layer = moe_layers(model)[1]
    seen = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
    handle.remove()
    x = seen[0].reshape(-1, seen[0].shape[-1])
    chosen = (x @ layer.router.weight.T).argsort(dim=-1, descending=True)[:, :2]
    counts = torch.bincount(chosen.reshape(-1), minlength=4).double()
    assert shares[1] == pytest.approx((counts / counts.sum()).tolist())


def test_artifact_round_trip_after_dropping_an_expert(tmp_path):
    loaded = create_model("fake-moe-llm")
    moe_groups(loaded.module)[0].keep_only([2, 3, 1])
    out = save_model_artifact(tmp_path / "moe", loaded, {"note": "test"})
    manifest = json.loads((out / "toolkit.json").read_text())
    assert manifest["family"] == "moe-llm" and manifest["note"] == "test"
    reason = manifest["moe"].pop("layout_reason")  # Mixtral needs one count everywhere
    assert manifest["moe"] == {"num_experts": 4, "top_k": 2, "layers": [3, 4],
                               "layout": "toolkit-stacked"}
    assert "experts per layer [3, 4]" in reason
    assert manifest["files"]["weights"] == ["model.safetensors"]
    again = load_model(str(out))
    ids = torch.randint(0, 259, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again.module(input_ids=ids).logits,
                                   loaded.module(input_ids=ids).logits, rtol=0, atol=0)
    dense = save_model_artifact(tmp_path / "dense", create_model("fake-llama"), {})
    assert json.loads((dense / "toolkit.json").read_text())["family"] == "llm"  # not moe-llm


@pytest.fixture
def small_streams(monkeypatch):
    """The job on a short text instead of the full Wikipedia/news streams (tokenizing
    those with the byte-level fake tokenizer takes most of a test's time)."""
    def streams(tokenizer):
        ids = tokenize_text(tokenizer, TEXT * 2)
        return TokenStreams(calib_pool=ids, wiki_eval=ids[:300], news_eval=ids[300:600])

    monkeypatch.setattr(upcycle_job, "cached_streams", streams)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    upcycle_job.add_upcycle_arguments(parser)
    return parser.parse_args(list(argv))


def test_upcycle_job_writes_a_loadable_artifact_with_its_numbers(small_streams, tmp_path,
                                                                 capsys):
    out, report = tmp_path / "moe", tmp_path / "report.json"
    args = parse("--model", "fake-llama", "--experts", "3", "--top-k", "2", "--steps", "4",
                 "--batch-size", "2", "--seq-len", "32", "--lr", "1e-3", "--eval-windows",
                 "2", "--eval-seq-len", "64", "--out", str(out), "--json", str(report),
                 "--quiet")
    assert args.run(args) == 0
    manifest = json.loads((out / "toolkit.json").read_text())
    assert manifest["moe"] == {"num_experts": 3, "top_k": 2, "layers": [3, 3],
                               "layout": "mixtral"}
    metrics = manifest["metrics"]
    assert set(metrics) == {"dense", "upcycled", "trained"}
    assert metrics["upcycled"]["wikipedia"]["ppl"] == pytest.approx(
        metrics["dense"]["wikipedia"]["ppl"], rel=1e-4)
    assert len(manifest["training"]["lm_loss"]) == 4
    shares = manifest["routing"]["share_per_layer"]
    assert len(shares) == 2 and all(len(s) == 3 for s in shares)
    written = json.loads(report.read_text())
    assert written["output"] == str(out) and written["moe"] == manifest["moe"]
    assert written["files"]["weights"] == ["model.safetensors"]
    assert "saved" in capsys.readouterr().out
    assert [g.num_experts for g in moe_groups(load_model(str(out)).module)] == [3, 3]


@pytest.mark.parametrize("argv, message", [
    (("--experts", "2", "--top-k", "3"), "exceeds"),
    (("--lr", "0"), "--lr"),
    (("--model", "fake-moe-llm"), "already has"),
    (("--model", "fake-cnn"), "image model"),
])
def test_upcycle_job_refuses_bad_requests(small_streams, tmp_path, argv, message):
    args = parse("--model", "fake-llama", *argv, "--out", str(tmp_path / "x"), "--quiet")
    with pytest.raises(UserError, match=message):
        args.run(args)
    assert not (tmp_path / "x").exists()


def test_toolkit_train_upcycle_is_the_upcycle_job():
    from toolkit.cli import build_parser

    args = build_parser().parse_args(["train", "upcycle", "--model", "fake-llama",
                                      "--experts", "3", "--out", "x"])
    assert args.run is upcycle_job.run_upcycle
    assert (args.experts, args.top_k, args.steps) == (3, 2, 100)
