"""Markdown for the `vmoe` section of BENCHMARKS.md, from benchmarks/vmoe.py's results."""

from __future__ import annotations

from benchmarks.expert_dropping_grid import SCHEDULES

LABELS = {"dense": "dense ViT", "superclass": "V-MoE, super-class router",
          "end-to-end": "V-MoE, end-to-end router"}
PAPER_GAIN_POINTS = 3.39  # ViT-Tiny MoE vs dense on ImageNet-1k (arXiv 2309.04354)


def render(report: dict, lm: dict | None) -> str:
    lines = family_table(report)
    lines += ["", *dropping_table(report["dropping"], "test accuracy %",
                                  report["summary"]["superclass"]["accuracies"][0],
                                  lambda v: f"{100 * v:.2f}")]
    if lm is not None:
        lines += ["", *lm_section(lm)]
    else:
        lines += ["", "Upcycled SmolLM2 MoE: not run in this report "
                      "(benchmarks/vmoe_upcycled_lm.py writes it)."]
    return "\n".join(lines)


def family_table(report: dict) -> list[str]:
    summary, timing = report["summary"], report["latency"]
    dense_p50 = timing["dense"]["p50_ms"]
    n = len(report["seeds"])
    lines = [f"Fashion-MNIST test set (10,000 images), {n} seeds, {report['epochs']} epochs "
             f"each on {report['train_images']:,} training images (the 10% held-out split "
             f"excluded); "
             f"latency: batch 1, ONNX through onnxruntime, 1 thread, seed-0 models timed "
             f"interleaved in one run.", "",
             "| model | test accuracy % (mean ± std) | per seed | params | active params | "
             "MFLOPs/image | p50 ms [p90] | x dense p50 | ONNX KB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, label in LABELS.items():
        s, t = summary[mode], timing[mode]
        lines.append(f"| {label} | {100 * s['accuracy_mean']:.2f} ± "
                     f"{100 * s['accuracy_std']:.2f} | "
                     f"{', '.join(f'{100 * a:.2f}' for a in s['accuracies'])} | "
                     f"{s['params_total']:,} | {s['params_active']:,} | "
                     f"{s['flops_per_image'] / 1e6:.2f} | {t['p50_ms']:.3f} [{t['p90_ms']:.3f}] "
                     f"| {t['p50_ms'] / dense_p50:.2f} | {t['file_bytes'] / 1e3:.0f} |")
    for name, t in timing.items():
        if name not in LABELS:
            lines.append(f"| {name} (frequency) | see below | - | - | - | - | "
                         f"{t['p50_ms']:.3f} [{t['p90_ms']:.3f}] | "
                         f"{t['p50_ms'] / dense_p50:.2f} | {t['file_bytes'] / 1e3:.0f} |")
    groups = report["runs"]["superclass"][0]["superclasses"]
    gain = 100 * (summary["superclass"]["accuracy_mean"] - summary["dense"]["accuracy_mean"])
    e2e = 100 * (summary["end-to-end"]["accuracy_mean"] - summary["dense"]["accuracy_mean"])
    lines += ["", "Super-classes (seed 0, from the dense model's confusions on held-out "
                  "training images): " + "; ".join("{" + ", ".join(g) + "}" for g in groups),
              "", f"The paper reports the MoE {PAPER_GAIN_POINTS:+.2f} points over dense "
                  f"(ViT-Tiny, ImageNet-1k). Here the super-class-routed MoE is "
                  f"{gain:+.2f} points over the dense ViT and the end-to-end one {e2e:+.2f} "
                  f"(means over {len(report['seeds'])} seeds; the seed spread is in the "
                  f"table)."]
    return lines


def dropping_table(rows: list[dict], metric: str, undropped: float, fmt) -> list[str]:
    schedules = _schedules_run(rows)
    lines = [f"Expert dropping ({metric}; before dropping: {fmt(undropped)}). Iterative = "
             "one expert per round, re-scored in between; +KD = distillation from the "
             "undropped model after every round. With one expert dropped, iterative is "
             "one-shot (marked =).", "",
             "| drop | criterion | " + " | ".join(schedules) + " | kept (one-shot) |",
             "|---|---|" + "---|" * len(schedules) + "---|"]
    for row in rows:
        cells = []
        for schedule in schedules:
            cell = row["schedules"].get(schedule)
            if cell is None:
                cells.append("not run")
                continue
            mark = "=" if cell.get("same_as_one_shot") else ""
            cells.append(f"{mark}{fmt(cell['metric'])}")
        kept = row["schedules"]["one-shot"]["kept"]
        kept_text = str(kept[0]) if len(kept) == 1 else f"{len(kept)} layers"
        lines.append(f"| {row['dropped']} ({100 * row['ratio']:.0f}%) | {row['criterion']} | "
                     + " | ".join(cells) + f" | {kept_text} |")
    return lines


def lm_section(lm: dict) -> list[str]:
    lines = [f"{lm['model']} sparsely upcycled to {lm['experts']} experts (top-{lm['top_k']}) "
             f"in every layer and trained {lm['train_steps']} steps on Wikipedia calibration "
             f"text ({lm['train_seconds']:.0f} s). Wikipedia perplexity: dense "
             f"{lm['ppl']['dense']:.2f}, upcycled before training {lm['ppl']['upcycled']:.2f}, "
             f"after training {lm['ppl']['trained']:.2f} ({lm['eval']['windows']} held-out "
             f"windows of {lm['eval']['seq_len']} tokens). Schedules run on the language "
             f"model (2 CPU cores): {', '.join(_schedules_run(lm['dropping']))}; a cell "
             "marked 'not run' was left out for time." + _lm_training_details(lm), ""]
    return lines + dropping_table(lm["dropping"], "Wikipedia perplexity",
                                  lm["ppl"]["trained"], lambda v: f"{v:.2f}")


def _schedules_run(rows: list[dict]) -> list[str]:
    return [s for s in SCHEDULES if any(s in row["schedules"] for row in rows)]


def _lm_training_details(lm: dict) -> str:
    if "train_lr" not in lm:  # results written before these fields were recorded
        return ""
    shares = [s for layer in lm["routing_after_training"] for s in layer]
    return (f" Training: batches of {lm['batch_size']} x {lm['train_seq_len']} tokens, "
            f"peak lr {lm['train_lr']:g}, routers and experts only; +KD = "
            f"{lm['recover_steps']} distillation steps at lr {lm['recover_lr']:g}. After "
            f"training each expert's share of the routing ranged "
            f"{min(shares):.3f}..{max(shares):.3f} over the layers "
            f"(uniform {1 / lm['experts']:.3f}).")
