"""Diagnostic: which per-layer sensitivity makes mixed-bit palettization allocate well.

    python benchmarks/mixed_bits_sensitivity.py [--calib-samples 8] [--eval-windows 8]

Dense SmolLM2-135M; one forward over the calibration text collects every linear's
H = sum_t x_t x_t^T (not block-sequential, unlike `toolkit compress`, so it is quick);
every linear is palettized (weighted k-means, 16-row tables) at 2, 3 and 4 bits once; then
`compress.quant.mixed_bits.allocate_bits` is run on two sensitivities:
    absolute  s_l(b) = tr(dW H dW^T) / n           (what the palettizer uses today)
    relative  s_l(b) = tr(dW H dW^T) / tr(W H W^T) (the layer's output noise-to-signal)
and the resulting models' Wikipedia perplexity is printed beside uniform 3 and 4 bits.
Prints a Markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = ((3.01, (2, 3, 4)), (3.01, (2, 4)), (3.7, (2, 4)))


def collect_hessians(model, linears: dict, calib: torch.Tensor) -> dict:
    hessians = {n: torch.zeros(m.in_features, m.in_features) for n, m in linears.items()}

    def hook(name):
        def add(_module, args):
            x = args[0].float().reshape(-1, args[0].shape[-1])
            hessians[name].addmm_(x.t(), x)
        return add
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        for start in range(0, calib.shape[0], 2):
            model(input_ids=calib[start:start + 2], use_cache=False)
    for handle in handles:
        handle.remove()
    return hessians


def main() -> int:
    from compress.quant.mixed_bits import allocate_bits, output_error
    from compress.quant.palettize import palettize
    from models import load_model
    from toolkit.data.streams import cached_streams
    from toolkit.eval.perplexity import perplexity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=8)
    args = parser.parse_args()
    loaded = load_model("smollm2-135m")
    model, streams, length = loaded.module, cached_streams(loaded.tokenizer), 512
    windows = streams.wiki_eval[: args.eval_windows * length].view(-1, length)
    calib = streams.calib_pool[: args.calib_samples * length].view(-1, length)
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lm_head" not in n}
    dense = {n: m.weight.data.clone() for n, m in linears.items()}
    hessians = collect_hessians(model, linears, calib)
    tokens = calib.numel()
    palettes = {(n, b): palettize(w, b, 16, 20, hessians[n].diagonal())
                for n, w in dense.items() for b in (2, 3, 4)}

    def score(bits_of: dict) -> str:
        for n in dense:
            linears[n].weight.data.copy_(palettes[(n, bits_of[n])].dequantize())
        ppl = perplexity(model, windows, batch_size=4).ppl
        for n, w in dense.items():
            linears[n].weight.data.copy_(w)
        return f"{ppl:.2f} | {dict(sorted(Counter(bits_of.values()).items()))}"

    print("| allocation | target | choices | wiki ppl | layers per bits |\n|---|---|---|---|---|")
    for bits in (3, 4):
        print(f"| uniform | {bits} | - | {score(dict.fromkeys(dense, bits))} |")
    for kind in ("absolute", "relative"):
        layers = []
        for n, w in dense.items():
            energy = float(((w @ hessians[n]) * w).sum()) / tokens
            options = {}
            for b in (2, 3, 4):
                error = output_error(w, palettes[(n, b)].dequantize(), hessians[n], tokens)
                stored = 8 * palettes[(n, b)].storage_bytes() / w.numel()
                options[b] = (error / energy if kind == "relative" else error, stored)
            layers.append((n, w.numel(), options))
        for target, choices in CASES:
            subset = [(n, k, {b: o[b] for b in choices}) for n, k, o in layers]
            print(f"| {kind} | {target} | {choices} | "
                  f"{score(allocate_bits(subset, target))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
