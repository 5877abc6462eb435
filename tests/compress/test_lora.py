"""LoRA recovery (compress/recovery/lora*.py, models/qformat/lora.py): the adapted linear
computes W_q x + s B A x, the start equals the compressed model, training lowers the KL to
the dense teacher on held-out data, it is deterministic, and bad inputs are refused. On
linears that were only pruned the same holds, and the pruned weights stay as they were."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import compress
from compress.errors import CompressError
from compress.prune import WandaConfig
from compress.quant import RTNConfig
from compress.recovery import LoraConfig
from models import create_model
from models.qformat.lora import adapters_of


def _compressed(bits: int = 2):
    loaded = create_model("fake-llama")
    teacher = copy.deepcopy(loaded.module).eval()
    vocab = loaded.module.config.vocab_size
    calib = torch.randint(0, vocab, (8, 32), generator=torch.Generator().manual_seed(0))
    report = compress.apply(loaded.module, RTNConfig(bits=bits, group_size=16), calib)
    return loaded.module, teacher, report.quantized, vocab


def _tokens(vocab: int, rows: int, length: int, seed: int) -> torch.Tensor:
    """Token windows with structure a model can learn (a repeated random motif)."""
    g = torch.Generator().manual_seed(seed)
    motif = torch.randint(0, vocab, (rows, 8), generator=g)
    return motif.repeat(1, length // 8)


def _kl(model: nn.Module, teacher: nn.Module, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        log_t = torch.log_softmax(teacher(input_ids=tokens).logits.float(), -1)
        log_s = torch.log_softmax(model(input_ids=tokens).logits.float(), -1)
    return float((log_t.exp() * (log_t - log_s)).sum(-1).mean())


def test_start_equals_compressed_model_and_forward_is_wq_x_plus_s_b_a_x():
    model, teacher, quantized, vocab = _compressed()
    tokens = _tokens(vocab, 2, 32, 1)
    with torch.no_grad():
        before = model(input_ids=tokens).logits.clone()
    config = LoraConfig(rank=4, alpha=8, steps=1, lr=1e-12, batch_size=2, seq_len=32)
    compress.apply(model, config, tokens, teacher=teacher, quantized=quantized)
    adapters = adapters_of(model)
    assert set(adapters) == set(quantized) and len(adapters) == 14
    # Nearly zero lr: B is still ~0, so the logits are the compressed model's.
    with torch.no_grad():
        after = model(input_ids=tokens).logits
    assert torch.allclose(after, before, atol=1e-5)
    # Set A and B to known values and compute one linear by hand.
    name = "model.layers.1.mlp.down_proj"
    linear = dict(model.named_modules())[name]
    adapter = adapters[name]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        adapter.lora_A.copy_(torch.randn(adapter.lora_A.shape, generator=g))
        adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g))
    x = torch.randn(3, linear.in_features, generator=g)
    w_q = quantized[name].dequantize().float()
    expected = x @ w_q.t() + 2.0 * (x @ adapter.lora_A.detach().t()) @ adapter.lora_B.detach().t()
    assert config.scale == 2.0
    with torch.no_grad():
        assert torch.allclose(linear(x), expected, atol=1e-4)
        assert torch.equal(linear.weight, w_q)  # the packed weight itself is untouched


def test_training_lowers_held_out_kl_by_a_fifth_and_is_deterministic():
    results = []
    for _ in range(2):
        model, teacher, quantized, vocab = _compressed(bits=2)
        train = _tokens(vocab, 64, 32, 5)
        held = _tokens(vocab, 8, 32, 99)
        kl_start = _kl(model, teacher, held)
        config = LoraConfig(rank=8, steps=60, lr=3e-3, batch_size=8, micro_batch=4,
                            seq_len=32, seed=7)
        report = compress.apply(model, config, None, teacher=teacher, quantized=quantized,
                                train_tokens=train, held_out_tokens=held)
        section = report.manifest_section()
        kl_end = _kl(model, teacher, held)  # measured here, not by the toolkit
        assert abs(section["kl_before"] - kl_start) < 1e-4 * max(1.0, kl_start)
        assert kl_end < 0.8 * kl_start, (kl_start, kl_end)
        assert abs(section["kl_after"] - kl_end) < 1e-3 * max(1.0, kl_end)
        # fp16 storage: the adapters in memory are exactly fp16 values.
        for adapter in adapters_of(model).values():
            assert torch.equal(adapter.lora_B, adapter.lora_B.half().float())
        results.append({n: a.lora_B.detach().clone() for n, a in adapters_of(model).items()})
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])


def test_bits_are_counted_apart():
    model, teacher, quantized, vocab = _compressed(bits=4)
    config = LoraConfig(rank=4, steps=1, batch_size=2, seq_len=16)
    report = compress.apply(model, config, _tokens(vocab, 4, 16, 2), teacher=teacher,
                            quantized=quantized)
    section = report.manifest_section()
    linears = [dict(model.named_modules())[n] for n in quantized]
    params = sum(4 * (m.in_features + m.out_features) for m in linears)
    weights = sum(m.in_features * m.out_features for m in linears)
    assert section["adapter_bits_per_weight"] == pytest.approx(16 * params / weights)
    assert section["base_bits_per_weight"] == pytest.approx(
        8 * sum(q.storage_bytes() for q in quantized.values()) / weights)
    assert section["rank"] == 4 and section["bytes"] == 2 * params


@pytest.mark.parametrize("knobs, words", [
    ({"rank": 0}, "lora rank 0 must be an integer >= 1"),
    ({"lr": -1.0}, "lora lr -1.0 must be a number > 0"),
    ({"alpha": 0}, "lora alpha 0 must be a number > 0"),
    ({"steps": 1.5}, "lora steps 1.5 must be an integer >= 1"),
    ({"targets": ["("]}, "lora targets entry '(' is not a valid regex"),
    ({"temperature": 0}, "lora temperature 0 must be a number > 0"),
])
def test_bad_knobs_are_refused_in_one_line(knobs, words):
    with pytest.raises(CompressError) as info:
        LoraConfig(**knobs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_model_without_compressed_linears_is_refused():
    loaded = create_model("fake-llama")
    teacher = copy.deepcopy(loaded.module)
    tokens = _tokens(loaded.module.config.vocab_size, 2, 16, 0)
    with pytest.raises(CompressError, match="no compressed linears"):
        compress.apply(loaded.module, LoraConfig(steps=1, seq_len=16), tokens,
                       teacher=teacher, quantized={})
    assert adapters_of(loaded.module) == {}
    model, teacher, quantized, vocab = _compressed()
    with pytest.raises(CompressError, match="widen targets"):
        compress.apply(model, LoraConfig(steps=1, seq_len=16, targets=("nothing",)),
                       tokens, teacher=teacher, quantized=quantized)


def _pruned(sparsity: float = 0.5):
    """fake-llama after Wanda: dense masked float weights, no packed form."""
    loaded = create_model("fake-llama")
    teacher = copy.deepcopy(loaded.module).eval()
    vocab = loaded.module.config.vocab_size
    calib = torch.randint(0, vocab, (8, 32), generator=torch.Generator().manual_seed(0))
    report = compress.apply(loaded.module, WandaConfig(sparsity=sparsity), calib)
    names = sorted(report.manifest_section()["per_layer"])
    return loaded.module, teacher, names, vocab


def _weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {n: modules[n].weight.detach().clone() for n in names}


def test_pruned_linears_get_adapters_and_their_weights_and_zeros_stay_frozen():
    model, teacher, pruned, vocab = _pruned()
    before = _weights(model, pruned)
    assert len(pruned) == 14 and all(
        abs(float((w == 0).float().mean()) - 0.5) < 0.01 for w in before.values())
    train = _tokens(vocab, 64, 32, 5)
    held = _tokens(vocab, 8, 32, 99)
    kl_start = _kl(model, teacher, held)
    config = LoraConfig(rank=8, steps=60, lr=3e-3, batch_size=8, micro_batch=4, seq_len=32,
                        seed=7)
    report = compress.apply(model, config, None, teacher=teacher, quantized={},
                            pruned=pruned, train_tokens=train, held_out_tokens=held)
    section = report.manifest_section()
    adapters = adapters_of(model)
    assert sorted(adapters) == pruned and report.quantized == {}
    # Training moved the adapters and lowered the KL to the dense model, measured here.
    kl_end = _kl(model, teacher, held)
    assert kl_end < 0.8 * kl_start, (kl_start, kl_end)
    assert abs(section["kl_before"] - kl_start) < 1e-4 * max(1.0, kl_start)
    assert abs(section["kl_after"] - kl_end) < 1e-3 * max(1.0, kl_end)
    assert section["losses"][-1] < section["losses"][0]
    # The pruned weights are untouched (so is their zero pattern): not merged, not trained.
    after = _weights(model, pruned)
    assert all(torch.equal(after[n], before[n]) for n in pruned)
    # The adapted linear is W_pruned x + s B A x, by hand.
    name = "model.layers.0.self_attn.q_proj"
    linear, adapter = dict(model.named_modules())[name], adapters[name]
    assert bool(adapter.lora_B.abs().sum() > 0)
    x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(4))
    expected = (x @ before[name].t() + config.scale * (x @ adapter.lora_A.detach().t())
                @ adapter.lora_B.detach().t())
    with torch.no_grad():
        assert torch.allclose(linear(x), expected, atol=1e-5)
    # Bits: the base is the float weights (fp32 here), the adapters counted apart.
    modules = dict(model.named_modules())
    weights = sum(modules[n].weight.numel() for n in pruned)
    params = sum(8 * (modules[n].in_features + modules[n].out_features) for n in pruned)
    assert section["base"] == "pruned" and section["base_bits_per_weight"] == 32.0
    assert section["adapter_bits_per_weight"] == pytest.approx(16 * params / weights)


def test_lora_after_pruning_then_quantization_adapts_the_packed_linears():
    model, teacher, pruned, vocab = _pruned()
    calib = _tokens(vocab, 4, 16, 2)
    quantized = compress.apply(model, RTNConfig(bits=4, group_size=16), calib).quantized
    config = LoraConfig(rank=4, steps=1, batch_size=2, seq_len=16)
    report = compress.apply(model, config, calib, teacher=teacher, quantized=quantized,
                            pruned=pruned)
    section = report.manifest_section()
    assert sorted(adapters_of(model)) == sorted(quantized) and section["base"] == "quantized"
    assert section["base_bits_per_weight"] == pytest.approx(
        8 * sum(q.storage_bytes() for q in quantized.values())
        / sum(q.shape[0] * q.shape[1] for q in quantized.values()))


def test_targets_narrow_the_pruned_linears_too():
    model, teacher, pruned, vocab = _pruned()
    config = LoraConfig(rank=2, steps=1, batch_size=2, seq_len=16, targets=("mlp",))
    compress.apply(model, config, _tokens(vocab, 4, 16, 2), teacher=teacher, pruned=pruned)
    assert sorted(adapters_of(model)) == [n for n in pruned if ".mlp." in n]
    model, teacher, pruned, vocab = _pruned()
    with pytest.raises(CompressError, match="widen targets"):
        compress.apply(model, LoraConfig(steps=1, seq_len=16, targets=("nothing",)),
                       _tokens(vocab, 2, 16, 0), teacher=teacher, pruned=pruned)
