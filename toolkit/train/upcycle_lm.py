"""Brief training of a sparsely upcycled language model (arXiv 2212.05055):

    L = CE(next token) + w * mean_layers( E * sum_e f_e P_e )

the next-token cross-entropy plus the Switch Transformer load-balancing loss of every MoE
layer (arXiv 2101.03961, where w = alpha = 1e-2; models.moe_lm.balance_loss), with AdamW.

Right after upcycling every expert is the same MLP, so the output does not depend on the
gates and the language-model loss gives the router no gradient: the router first learns
from the balance loss alone, while the experts, each updated only on the tokens routed
to it, drift apart; from then on both losses shape the routing. No noise is added to the
copies (they diverge through training).

By default only the MoE layers (routers and experts) train: on a CPU this skips the
weight gradients of the attention and of the 28M-parameter tied embedding, and it keeps
everything but the MLPs exactly the dense checkpoint's. `train_all=True` trains every
parameter, as the upcycling paper does.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from models.moe_lm import SparseMoeBlock
from toolkit.errors import UserError

# Gradient-norm clip: keeps the first steps of a fresh router from jolting the experts.
CLIP_NORM = 1.0
# Share of the steps spent warming the learning rate up linearly from 0.
WARMUP_FRACTION = 0.1


def moe_blocks(model: nn.Module) -> list[SparseMoeBlock]:
    return [m for m in model.modules() if isinstance(m, SparseMoeBlock)]


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to peak / 10."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def balance_losses(blocks: list[SparseMoeBlock]) -> Iterator[None]:
    """Blocks keep their balance loss while inside; cleared after (deep-copy safe)."""
    for block in blocks:
        block.balance_loss_enabled = True
    try:
        yield
    finally:
        for block in blocks:
            block.balance_loss_enabled, block.last_balance_loss = False, None


def next_token_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           batch[:, 1:].reshape(-1))


def _check_inputs(blocks: list[SparseMoeBlock], tokens: torch.Tensor, steps: int, lr: float,
                  batch_size: int) -> None:
    if not blocks:
        raise UserError("the model has no mixture-of-experts layers: upcycle it first "
                        "(models.upcycle.upcycle_llama)")
    if tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.dtype.is_floating_point:
        raise UserError(f"training tokens must be integer ids [N, L >= 2], got "
                        f"{tuple(tokens.shape)} {tokens.dtype}")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise UserError(f"steps ({steps}), batch size ({batch_size}) and learning rate "
                        f"({lr}) must be positive")


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Row indices, batch by batch: seeded permutations of the N rows, one after another."""
    order = torch.empty(0, dtype=torch.long)
    while True:
        while order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(count, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def train_upcycled(model: nn.Module, tokens: torch.Tensor, *, steps: int, lr: float,
                   batch_size: int, seed: int, balance_weight: float = 0.01,
                   train_all: bool = False, device: str = "cpu",
                   progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Train in place on the rows of `tokens` [N, L]; returns the training record."""
    blocks = moe_blocks(model)
    _check_inputs(blocks, tokens, steps, lr, batch_size)
    trained = (list(model.parameters()) if train_all
               else [p for block in blocks for p in block.parameters()])
    trained_ids = {id(p) for p in trained}
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained_ids)
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    batches = _batches(tokens.shape[0], batch_size, torch.Generator().manual_seed(seed))
    lm_history, balance_history = [], []
    model.to(device).train()
    start = time.perf_counter()
    try:
        with balance_losses(blocks):
            for step in range(steps):
                batch = tokens[next(batches)].to(device)
                lm = next_token_loss(model, batch)
                balance = torch.stack([b.last_balance_loss for b in blocks]).mean()
                optimizer.zero_grad(set_to_none=True)
                (lm + balance_weight * balance).backward()
                torch.nn.utils.clip_grad_norm_(trained, CLIP_NORM)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, steps, lr)
                optimizer.step()
                lm_history.append(lm.item())
                balance_history.append(balance.item())
                if progress is not None:
                    progress("train", step + 1, steps)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])
        model.eval()
    seconds = time.perf_counter() - start
    return {"steps": steps, "batch_size": batch_size, "seq_len": int(tokens.shape[1]),
            "lr": lr, "schedule": "linear warm-up 10%, cosine to lr/10", "optimizer": "AdamW",
            "weight_decay": 0.0, "clip_norm": CLIP_NORM, "balance_weight": balance_weight,
            "seed": seed, "trained": "all" if train_all else "moe",
            "trained_parameters": sum(p.numel() for p in trained),
            "tokens_seen": steps * batch_size * int(tokens.shape[1]),
            "lm_loss": lm_history, "balance_loss": balance_history,
            "seconds": seconds, "seconds_per_step": seconds / steps}


def routing_frequencies(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 4,
                        device: str = "cpu") -> list[list[float]]:
    """Per MoE layer, the share of routing assignments (token x top-k slot) that go to
    each expert over `tokens` [N, L]; each layer's list sums to 1."""
    blocks = moe_blocks(model)
    stores: list[list] = [[] for _ in blocks]
    model.to(device).eval()
    try:
        for block, store in zip(blocks, stores, strict=True):
            block.recording = store
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                model(input_ids=tokens[start:start + batch_size].to(device), use_cache=False)
    finally:
        for block in blocks:
            block.recording = None
    shares = []
    for block, store in zip(blocks, stores, strict=True):
        chosen = torch.cat([record.chosen for record in store]).reshape(-1)
        counts = torch.bincount(chosen, minlength=block.num_experts).double()
        shares.append((counts / counts.sum()).tolist())
    return shares
