"""The recovery sweep in BENCHMARKS.md: SmolLM2-135M, one sweep, its Pareto plots, the
recipes it recommends for a size budget, and the accuracy-recovery goals checked on its rows.

    toolkit sweep sweeps/smollm2-recovery.yaml --out runs/sweep-smollm2-recovery \\
        --bench onnx --jobs 2 --threads 1
    toolkit sweep sweeps/smollm2-recovery-pruned-lora.yaml \\
        --out runs/sweep-smollm2-pruned-lora --bench onnx --jobs 1 --threads 1
    toolkit sweep sweeps/smollm2-recovery-rotate-lora-data.yaml \\
        --out runs/sweep-smollm2-rotate-lora-data --bench onnx --jobs 1 --threads 2
    python -m benchmarks.sweep_recovery [--sweep runs/sweep-smollm2-recovery] \\
        [--rerun runs/sweep-smollm2-pruned-lora] [--added runs/sweep-smollm2-rotate-lora-data]
        [--from-saved] [--render-only]

Reads the sweep's results.json (nothing is recomputed; each finished row is read again from
its point folder by the sweep's own row code, `toolkit.sweep.rows.point_row`, so a fix to
how rows are read applies to cached points too). A rerun sweep's rows (same
calibration, evaluation and bench protocol; here the wanda50+lora point, which the first
sweep's toolkit refused) replace the rows of the same name and are marked with the spec
they came from. An added sweep's rows (same protocol; here the rotation goal's try with
LoRA on more distinct training text) are appended, marked alike. With --from-saved the
rows, protocol and environment come from benchmarks/results/sweep_recovery.json instead of
the first sweep's folder (for when that folder is gone), and only the added sweep is read
anew. Then picks the best point within 150 MB and within 100 MB with the sweep's
own budget code (`toolkit sweep --budget`), draws the Pareto plots of the merged rows with
the sweep's own plotting code into benchmarks/results/sweep_recovery/ beside the
recommended recipes, and writes benchmarks/results/sweep_recovery.json and the
`sweep_recovery` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = "sweeps/smollm2-recovery.yaml"
RERUN_SPEC = "sweeps/smollm2-recovery-pruned-lora.yaml"
ADDED_SPEC = "sweeps/smollm2-recovery-rotate-lora-data.yaml"
ROTATION_GOAL_POINTS = ("rotate+gptq-4b-g64", "rotate+gptq-4b-g64+lora")
BUDGETS = ("size=150MB", "size=100MB")
RESULTS = ROOT / "benchmarks" / "results"
FILES = RESULTS / "sweep_recovery"


def merge_rows(rows: list[dict], rerun: list[dict], spec: str) -> list[dict]:
    """`rows` with each row of `rerun` in place of the row of the same name (appended when
    there is none), marked `"from": spec`; the order of `rows` is kept."""
    fresh = {row["name"]: {**row, "from": spec} for row in rerun}
    merged = [fresh.pop(row["name"], row) for row in rows]
    return merged + list(fresh.values())


def reread_rows(sweep: Path, results: dict) -> list[dict]:
    """results.json's rows, each finished one read again from its point folder (a failed
    row, or one whose folder is gone, as results.json has it)."""
    from toolkit.sweep.points import Point, bench_dir_name
    from toolkit.sweep.rows import point_row
    from toolkit.sweep.spec import BenchSpec

    bench = results.get("bench")
    bench_dir = None if not bench else bench_dir_name(
        bench["format"], BenchSpec(**{k: v for k, v in bench.items() if k != "format"}))
    rows = []
    for row in results["rows"]:
        folder = sweep / "points" / row["key"]
        done = not row.get("error") and (folder / "done.json").is_file()
        rows.append(point_row(Point(row["name"], row["key"], row["recipe"], folder), bench_dir)
                    if done else row)
    return rows


def _row(rows: list[dict], name: str) -> dict | None:
    found = [r for r in rows if r["name"] == name and not r.get("error")]
    return found[0] if found else None


def _bits(row: dict) -> float:
    return row["bits_per_weight"] + (row.get("adapter_bits_per_weight") or 0.0)


def goals(rows: list[dict]) -> list[dict]:
    """Each goal of the recovery work, decided on the rows, with the numbers it used."""
    dense, rtn = _row(rows, "dense"), _row(rows, "rtn-4b-g64")
    out = []

    def add(goal: str, met: bool | None, evidence: str) -> None:
        out.append({"goal": goal, "met": met, "evidence": evidence})

    mixed = _row(rows, "palettize-mixed-3.7+lora")
    if mixed and rtn:
        ppl_ok = mixed["wiki_ppl"] < rtn["wiki_ppl"]
        cb_ok = mixed["closed_book_pct"] >= rtn["closed_book_ci_pct"][0]
        add("3.7-bit mixed palettes + LoRA beat RTN 4-bit g64 on Wikipedia perplexity and "
            "closed-book factoid (within its interval or better), at fewer bits",
            ppl_ok and cb_ok and mixed["bits_per_weight"] < rtn["bits_per_weight"],
            f"ppl {mixed['wiki_ppl']:.2f} vs {rtn['wiki_ppl']:.2f}; closed-book "
            f"{mixed['closed_book_pct']:.0f}% vs {rtn['closed_book_pct']:.0f}% "
            f"[{rtn['closed_book_ci_pct'][0]:.0f}-{rtn['closed_book_ci_pct'][1]:.0f}]; bits "
            f"{mixed['bits_per_weight']:.2f} base + "
            f"{mixed.get('adapter_bits_per_weight') or 0:.2f} adapters = {_bits(mixed):.2f} "
            f"vs {rtn['bits_per_weight']:.2f}")
    else:
        add("3.7-bit mixed palettes + LoRA beat RTN 4-bit g64", None, "point missing")
    added = [r["name"] for r in rows if r.get("from") == ADDED_SPEC and not r.get("error")]
    for name in (*ROTATION_GOAL_POINTS, *added):
        row = _row(rows, name)
        if row and dense:
            ratio = row["wiki_ppl"] / dense["wiki_ppl"]
            low, high = dense["closed_book_ci_pct"]
            add(f"{name}: perplexity within 10% of dense and closed-book within the dense "
                "interval", ratio <= 1.10 and low <= row["closed_book_pct"] <= high,
                f"ppl {row['wiki_ppl']:.2f} = {ratio:.3f}x dense {dense['wiki_ppl']:.2f}; "
                f"closed-book {row['closed_book_pct']:.0f}% vs dense [{low:.0f}-{high:.0f}]"
                + (f" (row from `{row['from']}`)" if row.get("from") else ""))
        else:
            add(f"{name}: within 10% of dense", None, "point missing")
    for name in ("wanda50", "wanda50+lora"):
        row = _row(rows, name)
        if row and dense:
            ratio = row["wiki_ppl"] / dense["wiki_ppl"]
            evidence = f"ppl {row['wiki_ppl']:.2f} = {ratio:.2f}x dense {dense['wiki_ppl']:.2f}"
            if row.get("adapter_bits_per_weight") is not None:
                evidence += (f" at {row['bits_per_weight']:.2f} + "
                             f"{row['adapter_bits_per_weight']:.2f} bits (LoRA "
                             f"r{row['adapter_rank']})")
            if row.get("from"):
                evidence += f" (row from `{row['from']}`)"
            add(f"{name}: perplexity at most 1.5x dense" if "lora" in name
                else f"{name} (the baseline LoRA should recover)", ratio <= 1.5, evidence)
        else:
            add(f"{name}: perplexity at most 1.5x dense", None, "point missing or failed")
    return out


def budget_picks(rows: list[dict]) -> list[dict]:
    from toolkit.sweep.budget import best_within, closest, over_text, parse_budget, recipe_text

    picks = []
    for text in BUDGETS:
        budget = parse_budget(text)
        best = best_within(rows, budget)
        if best is None:
            near = closest(rows, budget)
            picks.append({"budget": text, "best": None,
                          "closest": near and near["name"],
                          "over": near and over_text(near, budget)})
            continue
        recipe = FILES / f"best-{budget.slug}.yaml"
        # An added or rerun sweep's row names the sweep that made it.
        recipe.write_text(recipe_text(best, budget, best.get("from") or SPEC),
                          encoding="utf-8")
        picks.append({"budget": text, "best": best["name"], "wiki_ppl": best["wiki_ppl"],
                      "file_mb": best.get("file_mb"), "size_mb": best["size_mb"],
                      "recipe": str(recipe.relative_to(ROOT))})
    return picks


def render(result: dict) -> str:
    ev, bench = result["eval"], result.get("bench") or {}
    lines = [
        "## Accuracy recovery and the device budget: the recovery sweep over SmolLM2-135M",
        "",
        f"Generated by `toolkit sweep {SPEC} --bench onnx`"
        + "".join(f" and, for the row(s) named below, `toolkit sweep {extra['spec']} "
                  "--bench onnx`" for extra in (result.get("rerun"), result.get("added"))
                  if extra)
        + f" then `python -m benchmarks.sweep_recovery`, on {result['environment']['cpu']}, "
        f"{result['environment']['date']}. Every point is its own `toolkit run` on "
        f"{result['calibration']['samples']} x {result['calibration']['seq_len']} Wikipedia "
        f"calibration tokens (seed {result['calibration']['seed']}), then `toolkit eval "
        f"--suite kick` (perplexity on {ev['windows']} windows x {ev['seq_len']} per stream, "
        f"{ev['kick_questions']} factoid questions, 95% Wilson intervals). MB is the artifact "
        "on disk (embeddings float); `file MB` is the exported ONNX file (4-bit codes as "
        f"MatMulNBits, embedding table and head {bench.get('embedding_bits') or 'float'}-bit,"
        f" LoRA adapters as side branches), which a size budget counts; p50 ms is one "
        f"decode step at position {bench.get('prompt_tokens', '-')} in onnxruntime, "
        f"{bench.get('threads', '-')} thread (`toolkit bench`, {bench.get('runs', '-')}+ runs). "
        "It depends on the MatMulNBits accuracy level `--accuracy-level auto` chose for "
        "each file, which these points' exports made all or nothing: a file whose int8 "
        "compute changed the verified tokens went to float compute everywhere, where "
        "onnxruntime's 8-bit kernel (the table and head) is about 50 times slower "
        "(`matmul-nbits-rate` section), which most likely explains p50s of a few hundred "
        "ms against ~10 ms (the level each point's file got was not recorded). Exports "
        "since keep int8 compute on the 8-bit weights when "
        "that verifies (export/onnx/accuracy_choice.py); these points were not re-run. "
        "bits/w: stored bits per weight of the decoder linears, LoRA adapters apart.",
        *_rerun_note(result),
        *_added_note(result),
        "",
        result["table"].strip(),
        "",
        "Goals of the recovery work, decided on these rows:",
        "",
        "| goal | met | evidence |",
        "|---|---|---|",
    ]
    for goal in result["goals"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[goal["met"]]
        lines.append(f"| {goal['goal']} | {met} | {goal['evidence']} |")
    lines += ["", "The rotation goal's other tries (rotation seeds, groups of 32, 4x the "
              "calibration text, a learned rotation, LoRA on more text) and why rotation "
              "costs this checkpoint's factoids: the "
              "`rotation-factoids` section (benchmarks/rotation_factoids.py)."]
    lines += ["", "Recommended recipes (`toolkit sweep ... --budget`, the same code):", ""]
    for pick in result["budgets"]:
        if pick["best"]:
            size = pick["file_mb"] if pick["file_mb"] is not None else pick["size_mb"]
            lines.append(f"- `{pick['budget']}`: **{pick['best']}** (wiki ppl "
                         f"{pick['wiki_ppl']:.2f}, {size:.1f} MB), recipe "
                         f"`{pick['recipe']}`")
        else:
            lines.append(f"- `{pick['budget']}`: nothing fits; the closest is "
                         f"{pick['closest']} ({pick['over']})")
    lines += [""]
    for plot in result["plots"]:
        lines.append(f"![{plot}](benchmarks/results/sweep_recovery/{plot})")
    return "\n".join(lines) + "\n"


def _added_note(result: dict) -> list[str]:
    added = result.get("added")
    if not added:
        return []
    return ["", f"Added from `{added['spec']}` (same calibration, evaluation and bench "
            f"protocol; its exports chose their accuracy level as exports do now): "
            f"{', '.join(added['rows'])}. They repeat rotate+gptq-4b-g64+lora with one knob "
            "changed, the adapters' training text (see the spec's header)."
            + (" The rows before them were not rerun; they are read from the saved results "
               "of the first sweep, whose run folder is gone." if added.get("from_saved")
               else "")]


def _rerun_note(result: dict) -> list[str]:
    rerun = result.get("rerun")
    if not rerun:
        return []
    return ["", f"Rerun alone with `{rerun['spec']}` (same calibration, evaluation and bench "
            f"protocol), after lora learned to adapt pruned linears: {', '.join(rerun['rows'])}"
            ". That change is in the cache key of every LoRA point, so the other LoRA rows "
            "here come from the first sweep, made by the lora code before it; they were not "
            "rerun (the change only widened which linears get adapters)."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=ROOT / "runs" / "sweep-smollm2-recovery")
    parser.add_argument("--rerun", type=Path, default=ROOT / "runs" / "sweep-smollm2-pruned-lora",
                        help=f"the sweep of {RERUN_SPEC} (skipped when it has no results)")
    parser.add_argument("--added", type=Path,
                        default=ROOT / "runs" / "sweep-smollm2-rotate-lora-data",
                        help=f"the sweep of {ADDED_SPEC} (skipped when it has no results)")
    parser.add_argument("--from-saved", action="store_true",
                        help="take the first sweep's rows from "
                        "benchmarks/results/sweep_recovery.json (its run folder is gone)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the section from benchmarks/results/sweep_recovery.json")
    args = parser.parse_args()
    from benchmarks.environment import environment
    from benchmarks.markdown_section import replace_section

    if args.render_only:
        saved = json.loads((RESULTS / "sweep_recovery.json").read_text(encoding="utf-8"))
        replace_section(ROOT / "BENCHMARKS.md", "sweep_recovery", render(saved))
        return 0
    from toolkit.sweep.pareto import fronts, plot_png, write_bytes_atomic
    from toolkit.sweep.report import markdown_table

    if args.from_saved:
        saved = json.loads((RESULTS / "sweep_recovery.json").read_text(encoding="utf-8"))
        results, source = saved, RESULTS / "sweep_recovery.json"
        rows = [r for r in saved["rows"] if r.get("from") != ADDED_SPEC]
        rerun, env = saved.get("rerun"), saved["environment"]
    else:
        results = json.loads((args.sweep / "results.json").read_text(encoding="utf-8"))
        source, rows, rerun, env = args.sweep, reread_rows(args.sweep, results), None, None
        if (args.rerun / "results.json").is_file():
            again = _same_protocol(args.rerun, results, source)
            rows = merge_rows(rows, reread_rows(args.rerun, again), RERUN_SPEC)
            rerun = {"spec": RERUN_SPEC, "rows": [r["name"] for r in again["rows"]]}
    added = None
    if (args.added / "results.json").is_file():
        extra = _same_protocol(args.added, results, source)
        rows = merge_rows(rows, reread_rows(args.added, extra), ADDED_SPEC)
        added = {"spec": ADDED_SPEC, "rows": [r["name"] for r in extra["rows"]],
                 "from_saved": args.from_saved}
    FILES.mkdir(parents=True, exist_ok=True)
    found = fronts(rows)
    for front in found:  # the sweep's own plots, redrawn over the merged rows
        write_bytes_atomic(FILES / front.plot,
                           plot_png(rows, front, f"{front.title}: {results['model']}"))
    plots = sorted(front.plot for front in found)
    result = {"spec": SPEC, "rerun": rerun, "added": added, "model": results["model"],
              "calibration": results["calibration"], "eval": results["eval"],
              "bench": results.get("bench"), "environment": env or environment(), "rows": rows,
              "pareto": [{"cost": f.cost, "score": f.score, "names": f.names, "plot": f.plot}
                         for f in found],
              "table": markdown_table(rows, found), "goals": goals(rows),
              "budgets": budget_picks(rows), "plots": plots}
    (RESULTS / "sweep_recovery.json").write_text(json.dumps(result, indent=1) + "\n",
                                                 encoding="utf-8")
    text = render(result)
    replace_section(ROOT / "BENCHMARKS.md", "sweep_recovery", text)
    print(text)
    return 0


def _same_protocol(sweep: Path, results: dict, source: Path) -> dict:
    """`sweep`'s results.json, or SystemExit when its protocol differs from `results`'."""
    other = json.loads((sweep / "results.json").read_text(encoding="utf-8"))
    for key in ("model", "calibration", "eval", "bench"):
        if other[key] != results[key]:
            raise SystemExit(f"{sweep}: its {key} differs from {source}'s: "
                             "the rows would not compare")
    return other


if __name__ == "__main__":
    sys.exit(main())
