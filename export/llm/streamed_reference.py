"""PyTorch's logits for one token sequence, from a checkpoint read one part at a time.

Verifying an export of a model too large to hold needs the reference model's output
without holding it. The Hugging Face module is built on the meta device
(models.lazy.skeleton.StreamingDecoder); a forward pre-hook on each decoder block and the
final norm reads its weights just before it runs, and a forward hook frees them right
after, so one ordinary call of the base model computes the in-memory function with one
part resident at a time. The embedding table and the head, the largest single tensors
(Llama 3.2 3B: 128256 x 3072, 1.6 GB in float32), are read by rows: the prompt's rows,
and the head in blocks. LoRA adapters stored beside the weights (models/qformat/lora.py)
are attached to the skeleton's linears, so the reference is the recovered model.

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
import torch.nn.functional as F
from torch import nn

from models.lazy.skeleton import StreamingDecoder
from models.qformat.lora import attach_saved_adapters

HEAD_BLOCK_BYTES = 256 << 20  # float32 bytes of head rows applied at once


def streamed_logits(lazy, tokens: Sequence[int], tables=None) -> np.ndarray:
    """Logits [len(tokens), vocab] of the causal LM in `lazy` (a LazyCheckpoint).

    The embedding rows of `tokens` alone are read (a gather: exact), the base model runs
    with its blocks and final norm loaded by hooks, and the head is applied in row blocks
    of at most `HEAD_BLOCK_BYTES` in float32 (each logit is the same dot product).
    `tables` (export.llm.table_quant.QuantizedTables): the table and head values an
    export quantized, used in place of the stored ones."""
    decoder = StreamingDecoder(lazy.source, lazy.config)
    if lazy.path.is_dir():  # LoRA adapters act as forward hooks on the skeleton's linears
        attach_saved_adapters(lazy.path, decoder.model)
    layout = decoder.layout
    base = decoder.model.get_decoder()
    parts = [*layout.blocks, layout.norm]
    handles = []
    for part in parts:
        handles.append(part.register_forward_pre_hook(
            lambda module, _args: decoder.load(module)))
        handles.append(part.register_forward_hook(
            lambda module, _args, _out: decoder.release(module)))
    ids = torch.tensor([list(tokens)])
    try:
        with torch.no_grad():
            embeds = _embedding_rows(decoder, ids, tables)
            hidden = base(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]
            logits = _head(decoder, hidden, tables)
    finally:
        for handle in handles:
            handle.remove()
        for part in parts:
            decoder.release(part)
    return logits.float().numpy()


def _embedding_rows(decoder: StreamingDecoder, ids: torch.Tensor, tables) -> torch.Tensor:
    """The embedding module run on the rows of `ids` only (renumbered into them)."""
    embeddings = decoder.layout.embeddings
    name = decoder.parameter_names(embeddings)[0]
    unique, renumbered = torch.unique(ids, return_inverse=True)
    table = _rows(decoder.source, name, unique, tables).to(torch.float32)
    meta = embeddings._parameters["weight"]
    embeddings._parameters["weight"] = nn.Parameter(table, requires_grad=False)
    try:
        return embeddings(renumbered)
    finally:
        embeddings._parameters["weight"] = meta


def _head(decoder: StreamingDecoder, hidden: torch.Tensor, tables) -> torch.Tensor:
    head = decoder.layout.head
    names = decoder.parameter_names(head)
    vocab, width = head.weight.shape
    step = max(1, HEAD_BLOCK_BYTES // (4 * width))
    bias = (decoder.source.read(names[1]).to(torch.float32) if len(names) > 1 else None)
    pieces = []
    for begin in range(0, vocab, step):
        rows = torch.arange(begin, min(vocab, begin + step))
        weight = _rows(decoder.source, names[0], rows, tables).to(torch.float32)
        pieces.append(F.linear(hidden, weight, None if bias is None else bias[rows]))
    return torch.cat(pieces, dim=-1)


def _rows(source, name: str, rows: torch.Tensor, tables=None) -> torch.Tensor:
    """`source.read(name)[rows]`, reading only those rows where the source can (or the
    export-time quantized values of `tables`, when it holds `name`)."""
    replaced = tables.rows(name, rows) if tables is not None else None
    if replaced is not None:
        return replaced
    read_rows = getattr(source, "rows", None)
    return read_rows(name, rows) if read_rows is not None else source.read(name)[rows]


def teacher_forced_greedy(lazy, prompt: Sequence[int], runtime_tokens: Sequence[int],
                          tables=None) -> tuple[list[int], np.ndarray]:
    """(PyTorch's greedy token after each prefix of prompt + runtime_tokens, its prompt
    logits [len(prompt), vocab]) from one pass (module docstring)."""
    prompt_logits, rows = teacher_forced_rows(lazy, prompt, runtime_tokens, tables)
    return [int(row.argmax()) for row in rows], prompt_logits


def teacher_forced_rows(lazy, prompt: Sequence[int], runtime_tokens: Sequence[int],
                        tables=None) -> tuple[np.ndarray, np.ndarray]:
    """(PyTorch's prompt logits, its logit rows predicting each runtime token) from one
    pass over prompt + runtime_tokens[:-1]."""
    from export.llm.near_ties import generated_rows

    sequence = list(prompt) + list(runtime_tokens[:-1])
    logits = streamed_logits(lazy, sequence, tables)
    return logits[:len(prompt)], generated_rows(logits, len(prompt), len(runtime_tokens))
