"""Greedy generation through a .tflite LLM, meant to run in a child process: the LiteRT
interpreter can abort the whole process (seen: SIGABRT in allocate_tensors), so the caller
sees an exit code instead of dying with it.

    python -m export.litert.run_llm MODEL.tflite --prompt 1,2,3 --new-tokens 8 --out R.npz

MODEL may be one chunk of a chunked export (OUT_chunk1.tflite): all its chunks run.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from export.llm.greedy import greedy_tokens


def signature_steps(path: str, threads: int | None = None):
    """(prefill step, decode step, prefill length, cache shape) of a .tflite LLM."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    runners = {name: interpreter.get_signature_runner(name) for name in ("prefill", "decode")}
    inputs = interpreter.get_signature_list()["prefill"]["inputs"]
    details = runners["prefill"].get_input_details()
    prefill_tokens = int(details[inputs[0]]["shape"][1])
    cache_shape = [int(d) for d in details[inputs[2]]["shape"]]

    def make(runner):
        first = runner.get_input_details()[inputs[0]]["dtype"]  # int ids, or a chunk's hidden

        def step(ids, position, keys, values):
            out = runner(**dict(zip(inputs, (ids.astype(first), position.astype(np.int32),
                                             keys, values), strict=True)))
            return [out[name] for name in sorted(out)]  # output_0 logits, _1 keys, _2 values
        return step
    return make(runners["prefill"]), make(runners["decode"]), prefill_tokens, cache_shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--max-context", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from export.litert.run_chunks import chained_steps, chunk_files

    files = chunk_files(args.model)
    prefill, decode, chunk, cache_shape = (signature_steps(args.model) if len(files) == 1
                                           else chained_steps(files))
    prompt = [int(t) for t in args.prompt.split(",")]
    tokens, logits = greedy_tokens(decode, prompt, args.new_tokens, cache_shape,
                                   args.max_context, prefill_step=prefill, prefill_tokens=chunk)
    np.savez(args.out, tokens=np.asarray(tokens), logits=logits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
