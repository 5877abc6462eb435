"""PyTorch's logits for one token sequence, from a checkpoint read one part at a time.

Verifying an export of a model too large to hold needs the reference model's output
without holding it. The Hugging Face module is built on the meta device
(models.lazy.skeleton.StreamingDecoder); a forward pre-hook on each part (embeddings,
every decoder block, final norm, head) reads its weights just before it runs, and a
forward hook frees them right after, so one ordinary `model(input_ids)` call computes the
exact in-memory function with one part resident at a time.

Greedy decoding from this would read the whole model once per token. Instead the runtime
decodes first, and the reference runs once over the prompt plus the runtime's tokens
(teacher forcing): the reference's greedy token after each prefix is the argmax of its
logits at that position, so the runtime's tokens equal PyTorch's greedy ones exactly when
every one of them is that argmax (the first disagreement is where greedy would diverge).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.lazy.skeleton import StreamingDecoder


def streamed_logits(lazy, tokens: Sequence[int]) -> np.ndarray:
    """Logits [len(tokens), vocab] of the causal LM in `lazy` (a LazyCheckpoint)."""
    decoder = StreamingDecoder(lazy.source, lazy.config)
    layout = decoder.layout
    parts = [layout.embeddings, *layout.blocks, layout.norm, layout.head]
    handles = []
    for part in (p for p in parts if p is not None):
        handles.append(part.register_forward_pre_hook(
            lambda module, _args: decoder.load(module)))
        handles.append(part.register_forward_hook(
            lambda module, _args, _out: decoder.release(module)))
    try:
        with torch.no_grad():
            out = decoder.model(input_ids=torch.tensor([list(tokens)]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        for part in (p for p in parts if p is not None):
            decoder.release(part)
    return out.logits[0].float().numpy()


def teacher_forced_greedy(lazy, prompt: Sequence[int], runtime_tokens: Sequence[int]
                          ) -> tuple[list[int], np.ndarray]:
    """(PyTorch's greedy token after each prefix of prompt + runtime_tokens, its prompt
    logits [len(prompt), vocab]) from one pass (module docstring)."""
    sequence = list(prompt) + list(runtime_tokens[:-1])
    logits = streamed_logits(lazy, sequence)
    start = len(prompt) - 1
    greedy = [int(row.argmax()) for row in logits[start:start + len(runtime_tokens)]]
    return greedy, logits[:len(prompt)]
