"""Models as a runtime runs them, inside a bench worker process: load, then one timed step.

For an LLM (an ONNX or .tflite file written by `toolkit export`, or a PyTorch model re-authored the
same way) the steady-state step is one decode token at position P after a P-token prefill,
the unit of a phone's generation loop; prefill is timed on its own. Every decode run
starts from the same prefilled cache, so all runs do identical work. Other ONNX files run
on fixed random inputs of their declared shapes (symbolic dimensions set to 1).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LLM_METADATA_KEY = "edge_toolkit.llm"


@dataclasses.dataclass
class Runnable:
    step: Callable[[], Any]  # the timed unit
    outputs: Callable[[], np.ndarray]  # what accuracy compares (LLM: prefill logits)
    prefill: Callable[[], Any] | None = None  # LLMs only
    llm: dict | None = None  # prompt_tokens, max_context


def load_onnx(path: Path, threads: int, prompt: Sequence[int]) -> Runnable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    text = session.get_modelmeta().custom_metadata_map.get(LLM_METADATA_KEY)
    if text:
        meta = json.loads(text)
        names = meta["inputs"]

        def call(ids, position, keys, values):
            return session.run(None, dict(zip(names, (ids, position, keys, values),
                                              strict=True)))
        return _llm_runnable(call, meta["cache_shape"], meta["max_context"], prompt)
    feeds = _random_feeds(session)
    return Runnable(step=lambda: session.run(None, feeds),
                    outputs=lambda: np.asarray(session.run(None, feeds)[0]))


def load_torch_llm(spec: str, threads: int, prompt: Sequence[int],
                   max_context: int) -> Runnable:
    """The model in PyTorch eager, re-authored exactly as the exporters see it."""
    import torch

    from export.llm.export_decoder import ExportDecoder
    from models import load_model

    torch.set_num_threads(threads)
    decoder = ExportDecoder.from_hf(load_model(spec).module, max_context)

    def call(ids, position, keys, values):
        with torch.no_grad():
            out = decoder(*(torch.from_numpy(np.asarray(a)) for a in (ids, position, keys,
                                                                      values)))
        return [t.numpy() for t in out]
    return _llm_runnable(call, list(decoder.shape.cache_shape()), max_context, prompt)


def load_litert(path: Path, threads: int, prompt: Sequence[int]) -> Runnable:
    """A .tflite LLM from `toolkit export tflite` (prefill and decode signatures)."""
    from export.litert.run_llm import signature_steps

    prefill, decode, chunk, cache_shape = signature_steps(os.fspath(path), threads)
    return _llm_runnable(decode, cache_shape, cache_shape[2], prompt, prefill, chunk)


def _llm_runnable(call, cache_shape: Sequence[int], max_context: int,
                  prompt: Sequence[int], prefill_call=None,
                  chunk: int | None = None) -> Runnable:
    """Prefill = the prompt in one call, or in `chunk`-token calls to `prefill_call` (a
    fixed-length signature, see export.llm.greedy.prefill); step = one decode token."""
    from export.llm.greedy import prefill

    if len(prompt) + 1 > max_context:
        raise ValueError(f"a {len(prompt)}-token prompt does not fit the exported context "
                         f"of {max_context}: lower --prompt-tokens")

    def run_prefill():
        return prefill(prefill_call or call, prompt, cache_shape, max_context, chunk)

    logits, keys, values = run_prefill()
    token = np.asarray([[int(logits[-1].argmax())]], dtype=np.int64)
    position = np.array([len(prompt)], dtype=np.int64)
    return Runnable(step=lambda: call(token, position, keys, values),
                    outputs=lambda: run_prefill()[0], prefill=run_prefill,
                    llm={"prompt_tokens": len(prompt), "max_context": max_context})


def _random_feeds(session) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        if "float" in arg.type:
            dtype = np.float16 if "float16" in arg.type else np.float32
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[arg.name] = np.zeros(shape, dtype=np.int64 if "int64" in arg.type
                                       else np.int32)
    return feeds
