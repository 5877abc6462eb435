"""Greedy decoding of short answers for a batch of prompts, with the model's KV cache.

    y_{t+1} = argmax_v log p(v | prefix, prompt, y_1..y_t),  t < max_new_tokens

A prompt is `encode(prefix) + encode(prompt)`: the few-shot prefix every question shares is
run through the model once and its KV cache is copied into every batch, so each question
costs only its own tokens. Prompts are left-padded to one length per batch (the padding
sits between the prefix and the prompt); the attention mask hides it and position ids
count only real tokens, so a padded prompt decodes as it would alone. Each step feeds one
token per row with the cache of the previous steps. A batch stops early once every row
has produced a newline or the end-of-sequence token: answers are one line. Prompts are
sorted by length to keep padding small; answers come back in the prompts' order.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from models.kv_cache import cache_kwargs, returned_cache

STOP_TEXT = "\n"


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids without special tokens, like the perplexity streams (the GGUF SmolLM2
    tokenizer would prepend its chat token `<|im_start|>` as BOS)."""
    return tokenizer.encode(prompt, add_special_tokens=False) if prompt else []


def last_logits_kwargs(model: nn.Module) -> dict:
    """`logits_to_keep=1` where the model's forward takes it (transformers causal LMs do):
    only the last position's logits are needed, and the LM head over a 49K vocabulary at
    every prompt position costs as much as several decoder blocks."""
    parameters = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


def greedy_answers(model: nn.Module, tokenizer, prompts: Sequence[str], *, prefix: str = "",
                   max_new_tokens: int, batch_size: int = 8,
                   device: str | torch.device = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> list[str]:
    """The greedy continuation of `prefix + prompt` for each prompt (at most
    `max_new_tokens` tokens, decoded without special tokens)."""
    device = torch.device(device)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    answers: list[str] = [""] * len(prompts)
    model.eval()
    prefix_ids = encode_prompt(tokenizer, prefix)
    prefix_cache = _prefix_cache(model, prefix_ids, device)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        generated = _decode_batch(model, tokenizer, [encoded[i] for i in rows], max_new_tokens,
                                  device, len(prefix_ids), prefix_cache)
        for row, tokens in zip(rows, generated, strict=True):
            answers[row] = tokenizer.decode(tokens, skip_special_tokens=True)
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return answers


@torch.no_grad()
def _prefix_cache(model: nn.Module, prefix_ids: list[int], device: torch.device) -> Any:
    if not prefix_ids:
        return None
    ids = torch.tensor([prefix_ids], dtype=torch.long, device=device)
    return returned_cache(model(input_ids=ids, use_cache=True, **last_logits_kwargs(model)))


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(max(len(ids) for ids in batch), 1)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        if ids:
            input_ids[row, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, length - len(ids):] = 1
    return input_ids, mask


@torch.no_grad()
def _decode_batch(model: nn.Module, tokenizer, batch: list[list[int]], max_new_tokens: int,
                  device: torch.device, prefix_len: int, prefix_cache: Any) -> list[list[int]]:
    input_ids, prompt_mask = _left_pad(batch, _pad_id(tokenizer))
    input_ids, prompt_mask = input_ids.to(device), prompt_mask.to(device)
    positions = prefix_len + (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([prompt_mask.new_ones((len(batch), prefix_len)), prompt_mask], dim=1)
    prefix_kwargs = {}
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(batch))
        prefix_kwargs = cache_kwargs(model, cache)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                use_cache=True, **prefix_kwargs, **last_logits_kwargs(model))
    generated: list[list[int]] = [[] for _ in batch]
    finished = [False] * len(batch)
    for step in range(max_new_tokens):
        next_ids = out.logits[:, -1].float().argmax(dim=-1)
        for row, token in enumerate(next_ids.tolist()):
            if finished[row]:
                continue
            if token == tokenizer.eos_token_id:
                finished[row] = True
                continue
            generated[row].append(token)
            finished[row] = STOP_TEXT in tokenizer.decode(generated[row])
        if all(finished) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones((len(batch), 1))], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
                    use_cache=True, **cache_kwargs(model, returned_cache(out)))
    return generated


def _pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0
