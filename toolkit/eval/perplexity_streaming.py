"""Perplexity of a model too large to hold, computed block by block.

The in-memory `toolkit.eval.perplexity.perplexity` runs each batch of windows through the
whole model. Here the order is turned around so that only one part of the model is ever
in memory (models/lazy/skeleton.py, `StreamingDecoder.materialized`):

    embeddings       -> what enters block 0, for every batch of windows
    block 0, 1, ...  -> each block over every batch, then freed
    final norm, head -> log-softmax, NLL of every predicted token, per batch

Each batch sees exactly the operations of the in-memory forward (the same block calls
with the same keyword arguments, captured by compress/block_io.py; the same batch
shapes), and the NLLs are summed in the same order, fp32 log-softmax and fp64 sums, so
`mean_nll`, `window_nll` and `ppl` are bit-identical to `perplexity(model, windows,
batch_size=...)` on the same weights (tests/toolkit/test_perplexity_streaming.py).
Memory: the hidden states of all windows ([K, L, hidden] in the compute dtype) plus one
block; the embedding table is read only at the windows' token rows where the source
allows it (`_embedding_entry`).

The head. For a large vocabulary (Llama-3.2-3B: 128256 x 3072, 1.5 GB in float32) the head
is not materialised: its rows are read in chunks, each chunk's logits are computed for
every batch, and the log-softmax is accumulated with a running logsumexp,

    lse = m + log(sum_c exp(m_c - m) * s_c),   s_c = sum_{v in chunk c} exp(z_v - m_c)

(the streaming softmax of arXiv 1805.02867). Summing in another order than
F.log_softmax changes the last bits (measured on SmolLM2-135M: about 1e-7 relative in
mean_nll), so it is used only where the head in float32 exceeds `EXACT_HEAD_BYTES`
(1 GiB); below that the head is materialised and the result is exact. `head="exact"` or
`head="chunked"` forces either.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compress.block_io import BlockInputs, capture_block0_inputs
from models.lazy.skeleton import StreamingDecoder
from toolkit.data import TokenStreams, eval_windows
from toolkit.errors import UserError
from toolkit.eval.perplexity import PerplexityResult
from toolkit.eval.protocol import EvalProtocol

EXACT_HEAD_BYTES = 1 << 30  # float32 head up to this size is materialised (exact results)
HEAD_CHUNK_BYTES = 64 << 20  # float32 bytes of head rows read at once in chunked mode
HEAD_MODES = ("auto", "exact", "chunked")

Progress = Callable[[int, int], None]


def streaming_perplexity(decoder: StreamingDecoder, windows: torch.Tensor, *,
                         batch_size: int = 1, progress: Progress | None = None,
                         head: str = "auto") -> PerplexityResult:
    """Perplexity of `decoder`'s model on `windows` ([K, L] token ids), one model part in
    memory at a time; equal to `perplexity(model, windows, batch_size=batch_size)`."""
    return _perplexities(decoder, [windows], batch_size, progress, head)[0]


def streaming_evaluate_perplexities(decoder: StreamingDecoder, streams: TokenStreams,
                                    protocol: EvalProtocol, *, batch_size: int = 1,
                                    progress: Callable[[str, int, int], None] | None = None,
                                    head: str = "auto") -> dict[str, PerplexityResult]:
    """`evaluate_perplexities` block by block: the Wikipedia held-out and news windows go
    through each block in one pass (each block is read once for both streams; batches
    never mix streams, so each stream's numbers are those of its own run). `progress`
    gets one stage, "eval (streaming)", counted in model parts."""
    names = ("wikipedia", "news")
    sets = [eval_windows(stream, protocol.seq_len, protocol.windows)
            for stream in (streams.wiki_eval, streams.news_eval)]
    tick = (lambda done, total: progress("eval (streaming)", done, total)) if progress else None
    return dict(zip(names, _perplexities(decoder, sets, batch_size, tick, head), strict=True))


def evaluate_directory_streaming(path: Path | str, protocol: EvalProtocol, *,
                                 device: str | torch.device = "cpu", batch_size: int = 1,
                                 progress: Callable[[str, int, int], None] | None = None,
                                 head: str = "auto") -> dict[str, PerplexityResult]:
    """Perplexity of the model at `path` (a Hugging Face directory or artifact, float or
    packed, one file or shards; a GGUF file or a registered name with a checkpoint on disk
    work too: models/lazy/open.py) on the built-in streams, one model part at a time."""
    from models.lazy.open import open_lazy
    from models.qformat.lora import attach_saved_adapters
    from toolkit.data import cached_streams
    from toolkit.limits import check_length

    lazy = open_lazy(str(path))  # checked config (quantization_config dropped), lazy source
    try:
        decoder = StreamingDecoder(lazy.source, lazy.config, device=device)
        if lazy.path.is_dir():  # LoRA adapters act as forward hooks on the skeleton's linears
            attach_saved_adapters(lazy.path, decoder.model)
        check_length(decoder.model, protocol.seq_len, "--eval-seq-len")
        streams = cached_streams(lazy.tokenizer())
        return streaming_evaluate_perplexities(decoder, streams, protocol,
                                               batch_size=batch_size, progress=progress,
                                               head=head)
    finally:
        lazy.source.close()


# --- the pass over the model ---------------------------------------------------------------


def _perplexities(decoder: StreamingDecoder, sets: list[torch.Tensor], batch_size: int,
                  progress: Progress | None, head: str) -> list[PerplexityResult]:
    _check_inputs(decoder, sets, batch_size, head)
    layout = decoder.layout
    steps, done = decoder.n_blocks + 2, 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, steps)

    decoder.buffers_to(decoder.device)
    # Embeddings: what enters block 0, batch by batch as `perplexity` forms the batches.
    inputs = BlockInputs(hidden=[], kwargs=[])
    owner: list[int] = []  # which window set each batch belongs to
    model, table = _embedding_entry(decoder)
    with decoder.materialized(*table):
        for index, windows in enumerate(sets):
            part = capture_block0_inputs(model, layout.blocks[0], windows, batch_size,
                                         decoder.device)
            inputs.hidden.extend(h.to(decoder.compute_dtype) for h in part.hidden)
            inputs.kwargs.extend(part.kwargs)
            owner.extend([index] * len(part.hidden))
    tick()
    hidden = inputs.hidden
    with torch.no_grad():
        for block in layout.blocks:
            with decoder.materialized(block):
                for i, kwargs in enumerate(inputs.kwargs):
                    out = block(hidden[i], **kwargs)
                    hidden[i] = out[0] if isinstance(out, tuple | list) else out
            tick()
        targets = [w[start:start + batch_size].to(decoder.device)[:, 1:]
                   for w in sets for start in range(0, w.shape[0], batch_size)]
        if _head_mode(decoder, head) == "exact":
            token_log_probs = _exact_head(decoder, hidden, targets)
        else:
            token_log_probs = _chunked_head(decoder, hidden, targets)
    tick()
    return [_result(sets[k], [lp for lp, o in zip(token_log_probs, owner, strict=True)
                              if o == k]) for k in range(len(sets))]


def _embedding_entry(decoder: StreamingDecoder):
    """(what to call with input_ids, the modules to materialise for it). Where the source
    reads chosen rows (SafetensorsSource, PackedSource), only the rows of the tokens in a
    batch are read: the embedding module runs on that compact table with the ids renumbered
    into it (its lookup is a gather, and a subclass's extra step such as Gemma's scaling
    sees the same values), and its output goes to the model as `inputs_embeds`. So a
    128256 x 3072 table (1.5 GB in float32) is never held; otherwise it is materialised."""
    embeddings = decoder.layout.embeddings
    rows = getattr(decoder.source, "rows", None)
    names = decoder.parameter_names(embeddings)
    if rows is None or len(names) != 1 or not isinstance(embeddings, nn.Embedding):
        return decoder.model, (embeddings,)

    def call(*, input_ids: torch.Tensor, use_cache: bool):
        tokens, renumbered = torch.unique(input_ids.cpu(), return_inverse=True)
        table = rows(names[0], tokens).to(decoder.device, decoder.compute_dtype)
        pad = embeddings.padding_idx  # F.embedding wants it inside the table
        if pad is not None and pad >= table.shape[0]:
            table = torch.cat([table, table.new_zeros(pad + 1 - table.shape[0],
                                                      table.shape[1])])
        meta = embeddings._parameters["weight"]
        embeddings._parameters["weight"] = nn.Parameter(table, requires_grad=False)
        try:
            embeds = embeddings(renumbered.to(decoder.device))
        finally:
            embeddings._parameters["weight"] = meta
        return decoder.model(inputs_embeds=embeds, use_cache=use_cache)

    return call, ()


def _check_inputs(decoder: StreamingDecoder, sets: list[torch.Tensor], batch_size: int,
                  head: str) -> None:
    if head not in HEAD_MODES:  # a programming error, not the user's
        raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    for windows in sets:
        if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
            raise UserError(f"perplexity needs token windows of shape [K, L] with K >= 1 and "
                            f"L >= 2, got {list(windows.shape)}: raise --eval-seq-len")
    if getattr(decoder.config, "final_logit_softcapping", None):
        raise UserError("streaming perplexity does not apply final logit soft-capping: "
                        "evaluate this model with --engine memory")
    if decoder.layout.head is None or decoder.layout.norm is None:
        raise UserError("streaming perplexity needs a model with a final norm and an LM "
                        "head: evaluate this model with --engine memory")


def _head_mode(decoder: StreamingDecoder, head: str) -> str:
    if head != "auto":
        return head
    weight = decoder.layout.head.weight
    return "exact" if weight.numel() * 4 <= EXACT_HEAD_BYTES else "chunked"


def _exact_head(decoder: StreamingDecoder, hidden: list[torch.Tensor],
                targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """Token log-probabilities [B, L-1, 1] per batch, by the in-memory path's arithmetic:
    logits = head(norm(h)) over all positions, then fp32 log-softmax of all but the last."""
    layout = decoder.layout
    out = []
    with decoder.materialized(layout.norm, layout.head):
        for i, target in enumerate(targets):
            logits = layout.head(layout.norm(hidden[i]))
            hidden[i] = None  # type: ignore[call-overload]  # free as we go
            log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
            out.append(log_probs.gather(-1, target.unsqueeze(-1)))
    return out


def _chunked_head(decoder: StreamingDecoder, hidden: list[torch.Tensor],
                  targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """Token log-probabilities with the head read in row chunks (module docstring):
    per batch a running max m, a running sum s of exp(z - m), and the target's logit."""
    layout = decoder.layout
    head: nn.Module = layout.head
    if getattr(head, "bias", None) is not None:
        raise UserError("chunked log-softmax needs a head without bias: pass head='exact'")
    normed = hidden  # normalised in place, one batch at a time: one copy of the states
    with decoder.materialized(layout.norm):
        for i, states in enumerate(hidden):
            normed[i] = layout.norm(states)[:, :-1]
    name = decoder.parameter_names(head)[0]  # a tied head reads the embeddings
    vocab, width = head.weight.shape
    rows = max(1, HEAD_CHUNK_BYTES // (4 * width))
    device, dtype = decoder.device, decoder.compute_dtype
    shape = [t.shape for t in targets]
    run_max = [torch.full(s, -math.inf, device=device) for s in shape]
    run_sum = [torch.zeros(s, device=device) for s in shape]
    picked = [torch.zeros(s, device=device) for s in shape]
    for begin in range(0, vocab, rows):
        end = min(vocab, begin + rows)
        weight = _head_rows(decoder.source, name, begin, end).to(device, dtype)
        for i, target in enumerate(targets):
            logits = F.linear(normed[i], weight).float()  # [B, L-1, chunk]
            chunk_max = logits.amax(dim=-1)
            new_max = torch.maximum(run_max[i], chunk_max)
            run_sum[i] = (run_sum[i] * torch.exp(run_max[i] - new_max)
                          + torch.exp(logits - new_max.unsqueeze(-1)).sum(dim=-1))
            run_max[i] = new_max
            inside = (target >= begin) & (target < end)
            local = (target - begin).clamp(0, end - begin - 1).unsqueeze(-1)
            picked[i] = torch.where(inside, logits.gather(-1, local).squeeze(-1), picked[i])
        del weight
    return [(picked[i] - (run_max[i] + torch.log(run_sum[i]))).unsqueeze(-1)
            for i in range(len(targets))]


def _head_rows(source, name: str, begin: int, end: int) -> torch.Tensor:
    """Rows [begin, end) of the stored head, reading only their pages where the source
    can (SafetensorsSource, PackedSource), else the whole tensor."""
    rows = getattr(source, "rows", None)
    if rows is not None:
        return rows(name, torch.arange(begin, end))
    return source.read(name)[begin:end]


def _result(windows: torch.Tensor, token_log_probs: list[torch.Tensor]) -> PerplexityResult:
    """`perplexity`'s bookkeeping over the batches of one window set, in the same order."""
    total_nll = 0.0
    predicted = 0
    window_nll: list[float] = []
    for lp in token_log_probs:
        total_nll -= float(lp.sum(dtype=torch.float64))
        per_window = lp.squeeze(-1).sum(dim=-1, dtype=torch.float64)
        window_nll.extend((-per_window / lp.shape[1]).tolist())
        predicted += lp.numel()
    mean_nll = total_nll / predicted
    return PerplexityResult(math.exp(mean_nll), mean_nll, predicted, windows.shape[0],
                            windows.shape[1], window_nll)
