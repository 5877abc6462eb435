"""Which engine `toolkit eval` runs perplexity on, decided from headers before any weight
is read.

The in-memory evaluation loads the whole model in fp32; the streaming one
(toolkit/eval/perplexity_streaming.py) holds one model part plus the windows' hidden
states, and gives the same numbers bit for bit where the head is materialised. So `auto`
streams a dense decoder LM (family `llm`) whose in-memory footprint, the runtime plus its
fp32 weights (`in_memory_bytes` with no calibration tokens), exceeds `--memory-budget`
(default: half of the memory available now), and keeps everything else in memory.

The knowledge suite (`--suite kick`, `--compare`) generates answers token by token with
the whole model, which has no block-by-block form: there `--engine streaming` is refused
in one line and `auto` keeps the in-memory engine. An artifact with LoRA adapters
(`lora_adapters.safetensors`) streams too: the adapters are hooked onto the skeleton's
linears and act whenever a block is materialised.
"""

from __future__ import annotations

import argparse

from toolkit.errors import UserError
from toolkit.streaming.engine_choice import _shape, budget_bytes, is_streamable
from toolkit.streaming.memory import in_memory_bytes


def choose_eval_engine(model_spec: str, args: argparse.Namespace) -> str:
    """"memory" or "streaming" for the perplexity of `model_spec`."""
    choice = getattr(args, "engine", "memory")
    if choice == "memory":
        budget_bytes(args)  # a bad --memory-budget is refused whichever engine runs
        return "memory"
    streamable = is_streamable(model_spec, choice)
    if choice == "streaming":
        return "streaming"
    budget = budget_bytes(args)
    if not streamable:
        return "memory"
    n_params, _ = _shape(model_spec)
    if n_params is None:  # a test model that exists only in memory
        return "memory"
    return "streaming" if in_memory_bytes(n_params, 0, 0) > budget else "memory"


def refuse_streaming_generation(args: argparse.Namespace, what: str) -> None:
    """One line when the knowledge suite is asked to stream: it generates text."""
    if getattr(args, "engine", "auto") == "streaming":
        raise UserError(f"{what} generates answers with the whole model, which cannot be "
                        "read block by block: drop --engine streaming (or use --suite ppl "
                        "for block-by-block perplexity)")
