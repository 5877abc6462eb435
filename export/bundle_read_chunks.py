"""Run a bundle's chunked LiteRT LLM (export.litert_bundle_chunks) from its manifest alone:
one interpreter per chunk file, each signature bound by the roles the manifest records,
the chunks called in order with the activation passed on and each given its rows of the
one cache array [all layers, kv_heads, max_context, head_dim] the caller keeps."""

from __future__ import annotations

import os

import numpy as np

from export.errors import require
from export.llm.greedy import Step

ROLES_IN = ("position", "past_keys", "past_values")
ROLES_OUT = ("present_keys", "present_values")


def _bound(signature: dict, first_in: str, first_out: str):
    by_in = {t["role"]: t for t in signature["inputs"]}
    by_out = {t["role"]: t for t in signature["outputs"]}
    inputs = [(by_in[r]["name"], by_in[r]["dtype"]) for r in (first_in, *ROLES_IN)]
    return inputs, [by_out[r]["name"] for r in (first_out, *ROLES_OUT)]


def chunked_steps(bundle, threads: int | None = None) -> tuple[Step, Step, int | None]:
    """(prefill step, decode step, fixed prefill length) over the bundle's chunks."""
    require("ai_edge_litert", "litert", "running LiteRT bundles")
    from ai_edge_litert.interpreter import Interpreter

    chunks = bundle.manifest["chunks"]
    chosen = bundle.manifest["prefill"]
    parts = []
    for index, chunk in enumerate(chunks):
        interpreter = Interpreter(model_path=os.fspath(bundle.path / chunk["file"]),
                                  num_threads=threads)
        first_in = "input_ids" if index == 0 else "hidden"
        first_out = "logits" if index == len(chunks) - 1 else "hidden_out"
        first, last = chunk["layers"]
        parts.append((interpreter, chunk["signatures"], first_in, first_out, first, last + 1))

    def make(name: str) -> Step:
        runs = []
        for interpreter, signatures, first_in, first_out, start, stop in parts:
            inputs, outputs = _bound(signatures[name], first_in, first_out)
            runs.append((interpreter.get_signature_runner(name), inputs, outputs, start, stop))

        def step(ids, position, keys, values):
            x, new_keys, new_values = ids, [], []
            for runner, inputs, outputs, start, stop in runs:
                feeds = (x, position, keys[start:stop], values[start:stop])
                result = runner(**{n: np.ascontiguousarray(a, dtype=d)
                                   for (n, d), a in zip(inputs, feeds, strict=True)})
                x, k, v = (result[n] for n in outputs)
                new_keys.append(k)
                new_values.append(v)
            return x, np.concatenate(new_keys), np.concatenate(new_values)
        return step

    tokens = chosen.get("tokens")
    return (make(chosen["signature"]), make(chosen["decode_signature"]),
            int(tokens) if tokens else None)
