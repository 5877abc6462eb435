"""Which per-layer sensitivity makes mixed-bit palettization allocate well (quick protocol).

    OMP_NUM_THREADS=1 python benchmarks/mixed_bits_sensitivity.py [--calib-samples 8]
        [--eval-windows 8] [--kl-windows 4] [--kl-tokens 256] [--write]

Dense SmolLM2-135M; one forward over the calibration text collects every linear's
H = sum_t x_t x_t^T (not block-sequential, unlike `toolkit compress`, so it is quick);
every linear is palettized (weighted k-means, 16-row tables) once per bit width it needs;
then `compress.quant.mixed_bits.allocate_bits` is run with each sensitivity of
`compress.quant.sensitivity` (the library's own functions, `OutputKL` included):
    absolute  s_l(b) = tr(dW H dW^T) / n
    relative  s_l(b) = tr(dW H dW^T) / tr(W H W^T)
    measured  s_l(b) = mean next-token KL(dense || only layer l at b bits), 0 at the
              case's largest choice, on the first kl-windows x kl-tokens calibration tokens
and each allocation's Wikipedia perplexity is measured beside uniform 3 and 4 bits.
Prints a Markdown table; --write also keeps the rows in
benchmarks/results/mixed_bits_sensitivity.json after every case (a stopped run keeps what
it finished) and the table in BENCHMARKS.md at the end (--render: from the JSON alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.markdown_section import replace_section  # noqa: E402

SECTION = "mixed_bits_sensitivity"
RESULTS = ROOT / "benchmarks" / "results" / "mixed_bits_sensitivity.json"
# (target bits, choices): the recipe's 3.7 with Apple's 2/4 first, then the rest by cost
# (each new width adds a palette and, for `measured`, a KL per layer).
CASES = ((3.7, (2, 4)), (3.01, (2, 4)), (3.01, (2, 3, 4)), (3.7, (2, 3, 4, 6)))
KINDS = ("absolute", "relative", "measured")


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


class Bench:
    """Palettes, errors and KLs computed once, on demand, and allocations scored."""

    def __init__(self, args) -> None:
        from compress.quant.sensitivity import OutputKL, kl_windows
        from models import load_model
        from models.adapter import decoder_layout
        from toolkit.data.streams import cached_streams

        loaded = load_model("smollm2-135m")
        self.model, streams, length = loaded.module.eval(), cached_streams(loaded.tokenizer), 512
        self.windows = streams.wiki_eval[: args.eval_windows * length].view(-1, length)
        calib = streams.calib_pool[: args.calib_samples * length].view(-1, length)
        layout = decoder_layout(self.model)
        self.block_of, self.linears = {}, {}
        for index in range(len(layout.blocks)):
            for name, linear in layout.block_linears(index).items():
                self.block_of[name], self.linears[name] = index, linear
        self.dense = {n: m.weight.data.clone() for n, m in self.linears.items()}
        self.hessians = collect_hessians(self.model, self.linears, calib)
        self.tokens = calib.numel()
        start = time.perf_counter()
        self.kl = OutputKL(self.model, layout, kl_windows(calib, args.kl_windows, args.kl_tokens),
                           torch.device("cpu"), torch.float32, 4)
        self.seconds = {"kl_reference": time.perf_counter() - start, "palettes": 0.0, "kl": 0.0}
        self._palettes: dict = {}
        self._kls: dict = {}

    def palette(self, name: str, bits: int):
        from compress.quant.palettize import palettize

        if (name, bits) not in self._palettes:
            start = time.perf_counter()
            self._palettes[(name, bits)] = palettize(self.dense[name], bits, 16, 20,
                                                     self.hessians[name].diagonal())
            self.seconds["palettes"] += time.perf_counter() - start
        return self._palettes[(name, bits)]

    def sensitivity(self, kind: str, name: str, bits: int, largest: int) -> float:
        from compress.quant.mixed_bits import output_error
        from compress.quant.sensitivity import output_energy, relative_error

        weight, hessian = self.dense[name], self.hessians[name]
        if kind == "measured":
            if bits == largest:
                return 0.0
            if (name, bits) not in self._kls:
                start = time.perf_counter()
                self._kls[(name, bits)] = self.kl.kl_with(
                    self.block_of[name], self.linears[name], self.palette(name, bits).dequantize())
                self.seconds["kl"] += time.perf_counter() - start
            return self._kls[(name, bits)]
        error = output_error(weight, self.palette(name, bits).dequantize(), hessian, self.tokens)
        if kind == "relative":
            return relative_error(error, output_energy(weight, hessian, self.tokens))
        return error

    def allocate(self, kind: str, target: float, choices: tuple[int, ...]) -> dict[str, int]:
        from compress.quant.mixed_bits import allocate_bits

        layers = []
        for name, weight in self.dense.items():
            options = {b: (self.sensitivity(kind, name, b, choices[-1]),
                           8 * self.palette(name, b).storage_bytes() / weight.numel())
                       for b in choices}
            layers.append((name, weight.numel(), options))
        return allocate_bits(layers, target)

    def score(self, bits_of: dict[str, int]) -> dict:
        from compress.quant.mixed_bits import allocation_by_type
        from models.qformat import bits_per_weight
        from toolkit.eval.perplexity import perplexity

        for name in self.dense:
            self.linears[name].weight.data.copy_(self.palette(name, bits_of[name]).dequantize())
        ppl = perplexity(self.model, self.windows, batch_size=4).ppl
        for name, weight in self.dense.items():
            self.linears[name].weight.data.copy_(weight)
        counts: dict[str, int] = {}
        for bits in bits_of.values():
            counts[str(bits)] = counts.get(str(bits), 0) + 1
        stored = bits_per_weight({n: self.palette(n, b) for n, b in bits_of.items()})
        return {"wiki_ppl": ppl, "bits_per_weight": stored,
                "layers_per_bits": dict(sorted(counts.items())),
                "by_type": allocation_by_type(bits_of)}


def markdown(data: dict) -> str:
    p = data["protocol"]
    lines = [
        "### Mixed-bit sensitivity: absolute, relative, measured (quick protocol)",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/mixed_bits_sensitivity.py --write` on "
        f"{p['model']}: Hessians from one dense forward over {p['calib_samples']} x 512 "
        "calibration tokens (not block-sequential), each linear palettized once per width "
        "(weighted k-means, 16-row tables), the allocation applied to the dense model; "
        f"Wikipedia perplexity over {p['eval_windows']} windows x 512 tokens (not the "
        f"quantization table's protocol). `measured`: next-token KL on the first "
        f"{p['kl_windows']} x {p['kl_tokens']} calibration tokens with one layer "
        "quantized. CPU, one thread.",
        "",
    ]
    lines += rows_table(data["rows"])
    best = [r for r in data["rows"] if r["sensitivity"] in KINDS]
    if best:
        lines += ["", "Layers per type at 3.7 bits, choices 2,4:", ""]
        for row in best:
            if row["target"] == 3.7 and row["choices"] == [2, 4]:
                lines.append(f"- {row['sensitivity']}: {row['by_type']}")
    done = {(r["target"], tuple(r["choices"])) for r in data["rows"]}
    missing = [f"{t} bits of {','.join(map(str, c))}" for t, c in CASES if (t, c) not in done]
    if missing:
        lines += ["", f"Not run (the run was stopped to stay within its CPU budget): "
                  f"{'; '.join(missing)}."]
    s = data["seconds"]
    lines += ["", f"Seconds: palettes {s['palettes']:.0f}, KL reference {s['kl_reference']:.0f}, "
              f"per-layer KLs {s['kl']:.0f} ({s['kl_count']} partial forwards), total "
              f"{s['total']:.0f}."]
    return "\n".join(lines)


def rows_table(rows: list[dict]) -> list[str]:
    """The quick protocol's table, one line per scored allocation (shared with
    benchmarks/mixed_bits_rtn.py)."""
    lines = ["| sensitivity | target | choices | bits/weight | wiki ppl | layers per bits |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        choices = ",".join(map(str, row["choices"])) if row["choices"] else "-"
        lines.append(f"| {row['sensitivity']} | {row['target']} | {choices} | "
                     f"{row['bits_per_weight']:.3f} | {row['wiki_ppl']:.2f} | "
                     f"{row['layers_per_bits']} |")
    return lines


def row_recorder(bench, data: dict, results: Path | None, start: float):
    """`add(kind, target, choices, bits_of)`: score one allocation with `bench`, append its
    row to `data` (with the seconds so far), print it, and with `results` write the rows so
    far there (BENCHMARKS.md is written once at the end: it is a shared file). Shared with
    benchmarks/mixed_bits_rtn.py."""
    def add(kind: str, target, choices, bits_of) -> None:
        row = {"sensitivity": kind, "target": target, "choices": list(choices),
               **bench.score(bits_of)}
        data["rows"].append(row)
        data["seconds"] = {**bench.seconds, "kl_count": len(bench._kls),
                           "total": time.perf_counter() - start}
        print(f"| {kind} | {target} | {choices} | {row['bits_per_weight']:.3f} | "
              f"{row['wiki_ppl']:.2f} | {row['layers_per_bits']} |", flush=True)
        if results is not None:
            results.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    return add


def protocol_arguments(description: str) -> argparse.Namespace:
    """The quick protocol's command line, shared with benchmarks/mixed_bits_rtn.py."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--kl-windows", type=int, default=4)
    parser.add_argument("--kl-tokens", type=int, default=256)
    parser.add_argument("--write", action="store_true",
                        help="write BENCHMARKS.md's section and the results JSON")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite BENCHMARKS.md's section from the results JSON")
    return parser.parse_args()


def main() -> int:
    args = protocol_arguments(__doc__.splitlines()[0])
    if args.render:
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
        replace_section(ROOT / "BENCHMARKS.md", SECTION, markdown(data))
        return 0
    torch.set_num_threads(1)
    start = time.perf_counter()
    bench = Bench(args)
    data = {"protocol": {"model": "smollm2-135m", "calib_samples": args.calib_samples,
                         "eval_windows": args.eval_windows, "kl_windows": args.kl_windows,
                         "kl_tokens": args.kl_tokens, "threads": 1},
            "rows": [], "seconds": {}}

    add = row_recorder(bench, data, RESULTS if args.write else None, start)

    for bits in (3, 4):
        add("uniform", bits, (), dict.fromkeys(bench.dense, bits))
    for target, choices in CASES:
        for kind in KINDS:
            add(kind, target, choices, bench.allocate(kind, target, choices))
    if args.write:
        replace_section(ROOT / "BENCHMARKS.md", SECTION, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
