"""Verify a chunked LiteRT LLM (export.litert.chunked): the runtime decodes greedily in a
child process (all chunks in sequence, export.litert.run_chunks), then PyTorch scores the
prompt plus the runtime's tokens teacher-forced, one chunk module resident at a time:

    the verdict   the chunk modules with the file's weights (int4 codes, bf16 block scales,
                  the outlier channels' float columns) in float compute: the function the
                  file computes, but for its FCs' dynamic int8 inputs
    vs_emulated   the same modules with the runtime's per-row int8 inputs emulated
                  (export.litert.blockwise.dynamic_int8), reported beside the verdict
    vs_artifact   the model as stored (the Hugging Face module in memory, or read one part
                  at a time for a streamed one, export.llm.streamed_reference): the cost of
                  the int4 FC form, reported

Why the verdict is not the emulation: it matches one FC to about 3e-5, but int8 rounding
is discontinuous, so through a deep model it is one sample of the rounding noise, not the
runtime's: on SmolLM2-135M GPTQ 4-bit the runtime was 14.7% (logits) from the emulation
and 13.7% from float compute, and a 1e-6 change of the embeddings moved the emulated
logits by 13% (BENCHMARKS.md, "LiteRT int8 inputs"). So a file whose FCs compute with
int8 inputs is held as ONNX's int8 compute is (export.onnx.accuracy_choice): prompt
logits within INT8_INPUT_RTOL unless --rtol is given, and its tokens compared
teacher-forced with PyTorch's choice at each position, a disagreement allowed only where
PyTorch itself preferred its token by less than 0.1 in logit (a near tie,
export.llm.near_ties). A file with no int4 blockwise FC computes in float and must match
exactly, at --rtol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from export.litert.chunk_module import LitertChunk
from export.litert.chunked import ChunkedLitertExport, release_freed_memory
from export.litert.verify_llm import MappedVerification, litert_greedy
from export.llm.check import torch_greedy
from export.llm.near_ties import generated_rows, teacher_forced_agreement
from export.llm.streamed import StreamedArtifact
from export.verify import agreement

INT8_INPUT_RTOL = 0.1


def file_logits(result: ChunkedLitertExport, tokens: Sequence[int],
                emulate: Sequence[bool] = (False,)) -> list[np.ndarray]:
    """Logits [len(tokens), vocab] of the chunk modules as the file computes them, one
    chunk resident at a time: one array per entry of `emulate` (whether the runtime's int8
    FC inputs are emulated), each chunk built once for all of them."""
    streams = [torch.tensor([list(tokens)]) for _ in emulate]
    position = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        for chunk_file in result.chunks:
            module = LitertChunk(result.decoder, chunk_file.chunk, chunk_file.outliers,
                                 chunk_file.slice_width)
            keys = torch.zeros(module.cache_shape())
            for index, on in enumerate(emulate):
                module.emulate_runtime(on)
                streams[index], _, _ = module(streams[index], position, keys, keys.clone())
            del module, keys
            release_freed_memory()
    return [x[0].numpy() for x in streams]


def verify_chunked_litert(result: ChunkedLitertExport, artifact, prompt: Sequence[int],
                          new_tokens: int) -> MappedVerification:
    start = time.perf_counter()
    shape = result.decoder.shape
    tokens, logits = litert_greedy(result.files[0], prompt, new_tokens, shape.max_context)
    sequence = list(prompt) + tokens[:-1]
    int8_inputs = any(c.mapped_loss for c in result.chunks)
    reference, *emulated = file_logits(result, sequence,
                                       (False, True) if int8_inputs else (False,))
    rows = generated_rows(reference, len(prompt), len(tokens))
    greedy = [int(row.argmax()) for row in rows]  # PyTorch's choice after each prefix
    check = MappedVerification(
        "ai-edge-litert (chunks in sequence)",
        agreement("logits", logits, reference[:len(prompt)]), greedy, tokens, len(prompt),
        0.0, rtol=INT8_INPUT_RTOL if int8_inputs else None,
        agreement=teacher_forced_agreement(rows, tokens) if greedy != tokens else None,
        allow_near_ties=int8_inputs)
    check.notes = {"reference": "PyTorch with the file's weights in float compute"
                                + ("; vs_emulated: with the runtime's dynamic int8 FC "
                                   "inputs emulated" if int8_inputs else "")
                                + "; vs_artifact: the model as stored"}
    if int8_inputs:
        emulated_rows = generated_rows(emulated[0], len(prompt), len(tokens))
        forced = teacher_forced_agreement(emulated_rows, tokens)
        check.notes["vs_emulated"] = {
            "logits": agreement("logits", logits, emulated[0][:len(prompt)]).to_dict(),
            "teacher_forced": forced.to_dict()}
    if isinstance(artifact, StreamedArtifact):
        from export.llm.streamed_reference import teacher_forced_greedy

        artifact_tokens, artifact_logits = teacher_forced_greedy(artifact.lazy, prompt, tokens)
    else:
        artifact_tokens, artifact_logits = torch_greedy(artifact.module, prompt, new_tokens)
    check.artifact_logits = agreement("logits", logits, artifact_logits)
    check.artifact_tokens = artifact_tokens
    check.seconds = time.perf_counter() - start
    return check
