"""Mixed-bit round-to-nearest against uniform RTN on SmolLM2-135M (quick protocol).

    OMP_NUM_THREADS=1 python benchmarks/mixed_bits_rtn.py [--calib-samples 8]
        [--eval-windows 8] [--kl-windows 4] [--kl-tokens 256] [--write]

The protocol of benchmarks/mixed_bits_sensitivity.py (its `Bench`: Hessians from one
dense forward, the library's sensitivities and `allocate_bits`, Wikipedia perplexity of
the allocation applied to the dense model), with every linear quantized by
`compress.quant.rtn.rtn_quantize` in groups of 64 inputs, asymmetric (the toolkit's
default grid) instead of palettized. Round-to-nearest reads no data and the toolkit's
sensitivity pre-pass runs on the dense model too, so each row is what
`toolkit compress --method rtn --target-bits T --bits-choices ...` stores, up to which
calibration windows are drawn. Stored bits per weight count every group's fp16 scale and
zero point (4-bit g64: 4 + 20/64 = 4.3125).

Prints a Markdown table; --write keeps the rows in benchmarks/results/mixed_bits_rtn.json
after every row (a stopped run keeps what it finished) and the table in BENCHMARKS.md at
the end (--render: from the JSON alone).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.markdown_section import replace_section  # noqa: E402
from benchmarks.mixed_bits_sensitivity import (  # noqa: E402
    Bench,
    protocol_arguments,
    row_recorder,
    rows_table,
)

SECTION = "mixed_bits_rtn"
RESULTS = ROOT / "benchmarks" / "results" / "mixed_bits_rtn.json"
GROUP = 64
UNIFORM = (3, 4, 6)
# (target bits, choices): 4.0 bits of 3/4/6 against uniform 4-bit (4.31), the same size as
# uniform 4-bit, and 3.7 bits of 3/4. The measured KLs are shared: each layer is measured
# at 3 and 4 bits once (6, the largest choice, is 0 by definition).
CASES = ((4.0, (3, 4, 6)), (4.3125, (3, 4, 6)), (3.7, (3, 4)))
KINDS = ("absolute", "relative", "measured")


class RtnBench(Bench):
    """The sensitivity benchmark's bench, its layers quantized by round-to-nearest."""

    def palette(self, name: str, bits: int):  # the base class's name for "the layer at b"
        from compress.quant.rtn import rtn_quantize

        if (name, bits) not in self._palettes:
            start = time.perf_counter()
            self._palettes[(name, bits)] = rtn_quantize(self.dense[name], bits, GROUP,
                                                        symmetric=False)
            self.seconds["palettes"] += time.perf_counter() - start
        return self._palettes[(name, bits)]


def markdown(data: dict) -> str:
    p = data["protocol"]
    lines = [
        "### Mixed-bit round-to-nearest against uniform RTN (quick protocol)",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/mixed_bits_rtn.py --write` on {p['model']}: "
        f"every linear round-to-nearest in groups of {p['group_size']} (asymmetric), each "
        "layer's width from the allocation applied to the dense model, which for this "
        "data-free quantizer is what `toolkit compress --method rtn --target-bits` stores; "
        f"Hessians from one dense forward over {p['calib_samples']} x 512 calibration "
        f"tokens, `measured`: next-token KL on the first {p['kl_windows']} x "
        f"{p['kl_tokens']} calibration tokens with one layer quantized; Wikipedia "
        f"perplexity over {p['eval_windows']} windows x 512 tokens (the protocol of the "
        "palettization rows above, not the quantization table's). Bits per weight include "
        "the fp16 scale and zero point of every group. CPU, one thread.",
        "",
    ]
    lines += rows_table(data["rows"])
    mixed = [r for r in data["rows"] if r["sensitivity"] in KINDS
             and r["target"] == CASES[0][0] and tuple(r["choices"]) == CASES[0][1]]
    if mixed:
        lines += ["", f"Layers per type at {CASES[0][0]} bits, choices "
                      f"{','.join(map(str, CASES[0][1]))}:", ""]
        lines += [f"- {row['sensitivity']}: {row['by_type']}" for row in mixed]
    lines += _reading(data["rows"])
    done = {(r["target"], tuple(r["choices"]), r["sensitivity"]) for r in data["rows"]}
    missing = [f"{k} at {t} bits of {','.join(map(str, c))}" for t, c in CASES for k in KINDS
               if (t, c, k) not in done]
    if missing:
        lines += ["", f"Not run (the run was stopped): {'; '.join(missing)}."]
    s = data["seconds"]
    lines += ["", f"Seconds: RTN codes {s['palettes']:.0f}, KL reference "
                  f"{s['kl_reference']:.0f}, per-layer KLs {s['kl']:.0f} ({s['kl_count']} "
                  f"partial forwards), total {s['total']:.0f}."]
    return "\n".join(lines)


def _reading(rows: list[dict]) -> list[str]:
    """Each mixed case against the uniform widths around it, from the rows themselves."""
    uniform = {r["target"]: r for r in rows if r["sensitivity"] == "uniform"}
    lines = []
    for target, choices in CASES:
        mixed = {r["sensitivity"]: r for r in rows if r["target"] == target
                 and tuple(r["choices"]) == choices and r["sensitivity"] in KINDS}
        if not mixed or not uniform:
            continue
        best = min(mixed.values(), key=lambda r: r["wiki_ppl"])
        around = ", ".join(f"uniform {b}-bit {u['wiki_ppl']:.2f} at {u['bits_per_weight']:.3f}"
                           for b, u in sorted(uniform.items()))
        lines.append(f"- {target} bits of {','.join(map(str, choices))}: best "
                     f"{best['sensitivity']} {best['wiki_ppl']:.2f} at "
                     f"{best['bits_per_weight']:.3f} bits per weight ({around}).")
    return ["", "Each mix against the uniform widths:", "", *lines] if lines else []


def main() -> int:
    args = protocol_arguments(__doc__.splitlines()[0])
    if args.render:
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
        replace_section(ROOT / "BENCHMARKS.md", SECTION, markdown(data))
        return 0
    torch.set_num_threads(1)
    start = time.perf_counter()
    bench = RtnBench(args)
    data = {"protocol": {"model": "smollm2-135m", "group_size": GROUP,
                         "calib_samples": args.calib_samples,
                         "eval_windows": args.eval_windows, "kl_windows": args.kl_windows,
                         "kl_tokens": args.kl_tokens, "threads": 1},
            "rows": [], "seconds": {}}

    add = row_recorder(bench, data, RESULTS if args.write else None, start)

    for bits in UNIFORM:
        add("uniform", bits, (), dict.fromkeys(bench.dense, bits))
    # The layer-local kinds first (no KL): a run stopped during the measured KLs keeps them.
    for kind in KINDS:
        for target, choices in CASES:
            add(kind, target, choices, bench.allocate(kind, target, choices))
    if args.write:
        replace_section(ROOT / "BENCHMARKS.md", SECTION, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
