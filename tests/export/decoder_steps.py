"""A check several export tests share: the re-authored decoder, fed a prompt and then one
token at a time through its key/value cache, gives the source model's logits."""

from __future__ import annotations

import torch

from export.llm.export_decoder import ExportDecoder

CONTEXT = 48
PROMPT = [40, 41, 72, 101, 108, 108, 111]


def assert_decoder_matches_step_by_step(model: torch.nn.Module) -> None:
    decoder = ExportDecoder.from_hf(model, CONTEXT)
    ids = torch.tensor([PROMPT + [50, 60, 70]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits[0]
        keys, values = decoder.empty_cache()
        logits, keys, values = decoder(ids[:, :7], torch.tensor([0]), keys, values)
        steps = [logits[0]]
        for t in range(7, 10):  # decode one token at a time through the cache
            logits, keys, values = decoder(ids[:, t:t + 1], torch.tensor([t]), keys, values)
            steps.append(logits[0])
    torch.testing.assert_close(torch.cat(steps), reference, rtol=1e-5, atol=1e-5)
