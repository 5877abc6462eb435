"""Verify a chunked LiteRT LLM (export.litert.chunked): the runtime decodes greedily in a
child process (all chunks in sequence, export.litert.run_chunks), then two PyTorch
references score the prompt plus the runtime's tokens in one teacher-forced pass each:

    the file     the chunk modules, one built at a time from the DecoderWeights (read
                 lazily for a streamed artifact), with the mapped weights (bf16 block
                 scales) and the runtime's dynamic int8 FC inputs emulated
                 (export.litert.blockwise): the verdict, since it is what the file computes
    the artifact the model as stored (the Hugging Face module in memory, or read one part
                 at a time for a streamed one, export.llm.streamed_reference): reported
                 beside the verdict (`vs_artifact`) as the cost of the int4 FC form

The runtime's tokens equal a reference's greedy ones exactly when each is the argmax of
that reference's logits after the tokens before it (teacher forcing).

The emulation matches one FC to about 3e-5, but int8 rounding is discontinuous: where
the runtime's float order differs in the last bit, an input lands one step over, and
deep stacks amplify that (4 synthetic afm-3b layers: a 1e-6 input change moved the output
by 5e-3). So the file is held to INT8_INPUT_RTOL on the logits, as ONNX's int8 compute is
(export.onnx.accuracy_choice), unless --rtol is given, and its greedy tokens must equal
the reference's.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

import numpy as np
import torch

from export.litert.chunk_module import LitertChunk
from export.litert.chunked import ChunkedLitertExport
from export.litert.verify_llm import MappedVerification, litert_greedy
from export.llm.check import torch_greedy
from export.llm.streamed import StreamedArtifact
from export.verify import agreement

INT8_INPUT_RTOL = 0.1


def file_logits(result: ChunkedLitertExport, tokens: Sequence[int]) -> np.ndarray:
    """Logits [len(tokens), vocab] of the chunk modules as the file computes them, one
    chunk resident at a time."""
    x = torch.tensor([list(tokens)])
    position = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        for chunk_file in result.chunks:
            module = LitertChunk(result.decoder, chunk_file.chunk).emulate_runtime()
            keys = torch.zeros(module.cache_shape())
            x, _, _ = module(x, position, keys, keys.clone())
            del module, keys
            gc.collect()
    return x[0].numpy()


def verify_chunked_litert(result: ChunkedLitertExport, artifact, prompt: Sequence[int],
                          new_tokens: int) -> MappedVerification:
    start = time.perf_counter()
    shape = result.decoder.shape
    tokens, logits = litert_greedy(result.files[0], prompt, new_tokens, shape.max_context)
    sequence = list(prompt) + tokens[:-1]
    reference = file_logits(result, sequence)
    first = len(prompt) - 1
    greedy = [int(row.argmax()) for row in reference[first:first + len(tokens)]]
    check = MappedVerification("ai-edge-litert (chunks in sequence)",
                               agreement("logits", logits, reference[:len(prompt)]),
                               greedy, tokens, len(prompt), 0.0, rtol=INT8_INPUT_RTOL)
    check.notes = {"reference": "PyTorch with the file's weights and dynamic int8 FC "
                                "inputs emulated; vs_artifact: the model as stored"}
    if isinstance(artifact, StreamedArtifact):
        from export.llm.streamed_reference import teacher_forced_greedy

        artifact_tokens, artifact_logits = teacher_forced_greedy(artifact.lazy, prompt, tokens)
    else:
        artifact_tokens, artifact_logits = torch_greedy(artifact.module, prompt, new_tokens)
    check.artifact_logits = agreement("logits", logits, artifact_logits)
    check.artifact_tokens = artifact_tokens
    check.seconds = time.perf_counter() - start
    return check
