"""LoRA recovery as a recipe stage: attach rank-r adapters to the compressed linears (those
a quantization stage packed, or a pruning stage pruned) and train only them by distillation
from the dense model (compress/recovery/lora.py has the formulas and knobs;
models/qformat/lora.py the adapter and its file). A pruned linear keeps its dense masked
float weight, frozen with its zeros: the adapter is a side branch, never merged into it.

    A_0 ~ U(-1/sqrt(in), 1/sqrt(in)) (seeded),  B_0 = 0   ->  the start is the compressed model
    for each step: batch_size windows, micro_batch rows at a time:
        z_t = dense(x) (no grad),  z_s = compressed(x) + adapters
        loss += T^2 KL(softmax(z_t/T) || softmax(z_s/T)) / micro-batches;  backward
    AdamW on A, B only;  finally A, B rounded to fp16 (what the artifact stores)

The held-out KL (T = 1) is measured before and after on windows apart from training.
Memory: the frozen model, one micro-batch's logits of both models and its graph.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from compress.config import register_handler
from compress.distill import kd_loss
from compress.distill_batches import shuffled_forever
from compress.errors import CompressError
from compress.recovery.lora import LoraConfig
from compress.sweep import Progress
from models.adapter import decoder_layout
from models.qformat import QuantizedWeight, bits_per_weight
from models.qformat.lora import (
    LoraAdapter,
    adapter_bits_per_weight,
    adapter_summary,
    adapters_of,
    attach_adapter,
    round_to_storage,
)


@dataclasses.dataclass
class LoraReport:
    """What the stage did, in the shape the pipeline records stages."""

    quantized: dict[str, QuantizedWeight]  # unchanged: the adapters sit beside them
    section: dict[str, Any]
    seconds: dict[str, float]
    forward_dtype: str = "float32"

    def manifest_section(self) -> dict[str, Any]:
        return self.section


def lora_targets(model: nn.Module, compressed: Collection[str],
                 config: LoraConfig) -> list[str]:
    """The compressed linears (named in `compressed`: those with a packed form, or pruned)
    of the decoder blocks whose names match `config.targets` (all of them when it is
    empty), in module order."""
    layout = decoder_layout(model)
    names = []
    for index in range(len(layout.blocks)):
        for name in layout.block_linears(index):
            if name in compressed and (not config.targets
                                       or any(re.search(t, name) for t in config.targets)):
                names.append(name)
    return names


def base_bits(modules: dict[str, nn.Module], quantized: dict[str, QuantizedWeight],
              names: list[str]) -> float:
    """Stored bits per weight of the base the adapters sit on: the packed forms' (scales
    and tables included) when every adapted linear is quantized; otherwise each adapted
    linear's packed bits, or its float weight's bits for a linear that was only pruned
    (a pruned weight is stored dense, its zeros as zeros)."""
    if all(n in quantized for n in names):
        return bits_per_weight(quantized)
    bits = numel = 0
    for name in names:
        weight = modules[name].weight
        numel += weight.numel()
        bits += (8 * quantized[name].storage_bytes() if name in quantized
                 else 8 * weight.element_size() * weight.numel())
    return bits / numel if numel else 0.0


def init_adapter(linear: nn.Linear, config: LoraConfig,
                 generator: torch.Generator) -> LoraAdapter:
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (the Kaiming-uniform bound LoRA's reference code
    uses), B = 0, so s B A x = 0 and the model starts exactly at W_q x."""
    bound = 1.0 / math.sqrt(linear.in_features)
    a = (torch.rand(config.rank, linear.in_features, generator=generator) * 2 - 1) * bound
    return LoraAdapter(a, torch.zeros(linear.out_features, config.rank), config.scale)


@register_handler(LoraConfig)
def lora_stage(model: nn.Module, config: LoraConfig, calib: torch.Tensor | None, *,
               teacher: nn.Module | None = None,
               quantized: dict[str, QuantizedWeight] | None = None,
               pruned: Collection[str] = (),
               train_tokens: torch.Tensor | None = None,
               held_out_tokens: torch.Tensor | None = None,
               device: str | torch.device = "cpu", progress: Progress | None = None,
               **_options: Any) -> LoraReport:
    """Attach and train adapters on `model` in place. `train_tokens` [N, L] (default: the
    calibration windows `calib`) and `held_out_tokens` (default: the first calibration
    windows) are token ids; `quantized` (packed forms) and `pruned` (names of linears a
    pruning stage pruned) name the compressed linears."""
    start = time.perf_counter()
    quantized = dict(quantized or {})
    if teacher is None or teacher is model:
        raise CompressError("lora needs the dense model as teacher: put it in a recipe after "
                            "a quantization or pruning stage (the model before it is the "
                            "teacher)")
    train = calib if train_tokens is None else train_tokens
    if train is None or train.ndim != 2 or train.shape[0] == 0 or train.shape[1] < 2:
        raise CompressError("lora needs training token ids of shape [N, L] with L >= 2")
    held = train[:config.eval_samples] if held_out_tokens is None else held_out_tokens
    if adapters_of(model):
        raise CompressError("the model already has LoRA adapters: use one lora stage")
    compressed = set(quantized) | set(pruned)
    names = lora_targets(model, compressed, config)
    if not names:
        raise CompressError("lora found no compressed linears to adapt: put it after a "
                            "quantization stage (rtn, gptq, awq or palettize) or a pruning "
                            "stage (wanda, sparsegpt or magnitude)"
                            + (f", or widen targets {list(config.targets)}"
                               if config.targets and compressed else ""))
    device = torch.device(device)
    model.to(device).eval()
    teacher.to(device).eval()
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(config.seed)
    adapters = {}
    for name in names:
        adapters[name] = init_adapter(modules[name], config, generator)
        attach_adapter(modules[name], adapters[name])
    kl_before = held_out_kl(model, teacher, held, config.micro_batch, device)
    losses = _train(model, teacher, adapters, train, config, device, progress)
    round_to_storage(adapters)
    kl_after = held_out_kl(model, teacher, held, config.micro_batch, device)
    weights = sum(modules[n].in_features * modules[n].out_features for n in names)
    section = {"kind": "lora", "method": LoraConfig.method, **adapter_summary(adapters),
               "alpha": config.alpha if config.alpha is not None else config.rank,
               "steps": config.steps, "lr": config.lr, "seq_len": int(train.shape[1]),
               "train_windows": int(train.shape[0]), "train_tokens": int(train.numel()),
               "held_out_windows": int(held.shape[0]),
               "kl_before": kl_before, "kl_after": kl_after, "losses": losses,
               "base": ("quantized" if all(n in quantized for n in names) else "pruned"
                        if not any(n in quantized for n in names) else "mixed"),
               "base_bits_per_weight": base_bits(modules, quantized, names),
               "adapter_bits_per_weight": adapter_bits_per_weight(adapters, weights)}
    seconds = {"method": time.perf_counter() - start}
    return LoraReport(quantized, section, seconds)


def _train(model: nn.Module, teacher: nn.Module, adapters: dict[str, LoraAdapter],
           tokens: torch.Tensor, config: LoraConfig, device: torch.device,
           progress: Progress | None) -> list[float]:
    """AdamW on the adapters only; the model's own parameters are frozen meanwhile."""
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    with torch.no_grad():
        for a in adapters.values():
            a.to(device)
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order = shuffled_forever(tokens.shape[0], config.seed)
    losses: list[float] = []
    try:
        for step in range(config.steps):
            rows = torch.tensor([next(order) for _ in range(config.batch_size)])
            batch = tokens[rows]
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            chunks = batch.split(config.micro_batch)
            for chunk in chunks:
                chunk = chunk.to(device)
                with torch.no_grad():
                    target = teacher(input_ids=chunk, use_cache=False).logits
                logits = model(input_ids=chunk, use_cache=False).logits
                loss = kd_loss(logits, target, config.temperature) / len(chunks)
                loss.backward()
                total += float(loss.detach())
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            losses.append(total)
            if progress is not None:
                progress("lora", step + 1, config.steps)
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        model.eval()
    return losses


@torch.no_grad()
def held_out_kl(model: nn.Module, teacher: nn.Module, tokens: torch.Tensor,
                micro_batch: int, device: torch.device) -> float:
    """KL(teacher || model) at T = 1, averaged over every held-out token position."""
    total, count = 0.0, 0
    for chunk in tokens.split(micro_batch):
        chunk = chunk.to(device)
        s = model(input_ids=chunk, use_cache=False).logits
        t = teacher(input_ids=chunk, use_cache=False).logits
        positions = chunk.numel()
        total += float(kd_loss(s, t, 1.0)) * positions
        count += positions
    return total / count
