"""The `portrait` section of BENCHMARKS.md from benchmarks/results/portrait.json, and the
check of the issue's goal:

    size(ours) <= size(MediaPipe),  p50(ours) <= p50(MediaPipe) at 1 thread (LiteRT),
    mIoU(ours) >= mIoU(dense) - 0.01           (one point, on the same test portraits)

for the compressed model (pruned + int8), every number measured in the same run.
"""

from __future__ import annotations

MEDIAPIPE = "MediaPipe selfie"
COMPRESSED = "pruned+int8"
DENSE = "dense"


def goal(models: dict) -> dict:
    ours, reference, dense = models[COMPRESSED], models[MEDIAPIPE], models[DENSE]
    checks = {
        "size": ours["file_bytes"] <= reference["file_bytes"],
        "latency_1_thread": (ours["latency"]["1"]["p50_ms"]
                             <= reference["latency"]["1"]["p50_ms"]) if "1" in
        ours.get("latency", {}) else None,
        "miou_within_1_point_of_dense": ours["test"]["miou"] >= dense["test"]["miou"] - 0.01,
    }
    return {"model": COMPRESSED, "checks": checks,
            "met": all(value is True for value in checks.values())}


def _latency(model: dict, threads: str) -> str:
    timing = model.get("latency", {}).get(threads)
    return "-" if timing is None else f"{timing['p50_ms']:.2f} / {timing['p90_ms']:.2f}"


def render(results: dict) -> str:
    models = results["models"]
    threads = sorted({t for m in models.values() for t in m.get("latency", {})}, key=int)
    head = ["model", "input", "file KB", "params", "stored elements",
            *[f"p50 / p90 ms, {t} thread{'s' * (t != '1')}" for t in threads],
            "mIoU", "band mIoU", "boundary F", "astronaut IoU vs MediaPipe"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in models.items():
        params = "-" if m["params"] is None else f"{m['params']:,}"
        cells = [name, m["input"], f"{m['file_bytes'] / 1000:.1f}", params,
                 f"{m['stored_elements']:,}", *[_latency(m, t) for t in threads],
                 f"{m['test']['miou']:.4f}", f"{m['test']['band_iou']:.4f}",
                 f"{m['test']['boundary_f']:.4f}", f"{m['astronaut_iou_vs_mediapipe']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + _notes(results))


def _notes(results: dict) -> list[str]:
    env, mp, g = results["environment"], results["mediapipe"], results["goal"]
    first = results["models"][COMPRESSED]["test"]
    checks = ", ".join(f"{k} {'yes' if v else 'NO' if v is False else 'not measured'}"
                       for k, v in g["checks"].items())
    return [
        f"Test data: {first['images']} GENERATED portraits ({results['test_data']}); the "
        "toolkit's models were trained on generated portraits of the same kind, MediaPipe "
        "on real photos, so the mIoU columns favour ours. Masks at p > 0.5; band mIoU "
        f"within {first['band_width']} px of the true contour; boundary F within 2 px. "
        "Astronaut IoU: agreement of each person mask with MediaPipe's on scikit-image's "
        "astronaut photo (a real person), resized to the model's input.",
        f"MediaPipe: selfie_segmentation.tflite from the mediapipe {mp['version']} wheel "
        f"({mp['bytes']:,} bytes, sha256 {mp['sha256'][:12]}), fp16 weights, input RGB in "
        "[0, 1]; ours take raw pixels 0..255 with the normalisation folded in. Every file "
        "ran on ai-edge-litert (XNNPACK) on this CPU; latency = one inference, all files "
        "interleaved in one run per thread count. Params: the PyTorch network's (batch "
        "norms included, the hair-style head left out, as it is not exported); stored "
        "elements: constant tensor elements in the .tflite, the one count MediaPipe's file "
        "allows.",
        f"Goal (pruned+int8 no larger than MediaPipe's file, at least as fast at 1 thread, "
        f"mIoU within 1 point of our dense model): {'MET' if g['met'] else 'NOT met'} "
        f"({checks}).",
        f"Machine: {env['cpu']}, {env['cores']} logical CPUs, shared with other jobs; "
        f"torch {env['torch']}, python {env['python']}, {env['date']}. Sizes: "
        f"{results['sizes']['train_size']} training portraits, {results['sizes']['epochs']} "
        f"epochs, channel-prune sparsity {results['sparsity']} + "
        f"{results['sizes']['recover_steps']} KD steps, int8 calibrated on "
        f"{results['sizes']['calibration']} images.",
    ]
