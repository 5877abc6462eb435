"""An ExportReport as (label, value) rows for a terminal table: size, what was carried and
dropped (grouped by reason), the verification of its kind (LLM logits and greedy tokens,
vision outputs, or structural checks where the runtime cannot run here), the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from export.report import ExportReport


def report_rows(report: ExportReport) -> list[list[str]]:
    chunks = report.details.get("chunks") or []
    if report.path and len(chunks) > 1:  # OUT itself is not written, its chunks are
        where = f"{len(chunks)} packages: {chunks[0]['file']} .. {chunks[-1]['file']}"
    else:
        where = report.path or "(not written: verification failed)"
    rows = [["file", where],
            ["size", f"{report.file_bytes / 1e6:.2f} MB (float32 weights: "
                     f"{report.float32_bytes / 1e6:.2f} MB)"]]
    float_bytes = report.details.get("float_file_bytes", report.file_bytes)
    if float_bytes != report.file_bytes:
        rows.append(["float file", f"{float_bytes / 1e6:.2f} MB"])
    for how, count in report.carried.items():
        rows.append(["carried", f"{count} layers: {how}"])
    mapped = report.details.get("mapped_palettes")
    if mapped:  # palettes a target could only carry re-quantized (LiteRT)
        rows.append(["mapped", f"{len(mapped)} palette layers, relative weight error "
                               f"mean {sum(mapped.values()) / len(mapped):.3g}, max "
                               f"{max(mapped.values()):.3g}"])
    for why, layers in _group_by_reason(report.dropped).items():
        named = layers[0] if len(layers) == 1 else f"{len(layers)} layers"
        rows.append(["dropped", f"{named}: {why}"])
    check = report.verification
    if check is None:
        rows.append(["numerics", "not checked (verification off)"])
    elif "checks" in check:
        rows += [[item["check"], f"{'ok' if item['passed'] else 'FAILED'}: {item['detail']}"]
                 for item in check["checks"]]
        rows.append(["runtime", check["numerics"]])
    elif "outputs" in check:
        rows += _vision_rows(check)
    else:
        rows += _llm_rows(check)
    return rows + [["verdict", report.verdict]]


def _group_by_reason(dropped: list[dict]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for item in dropped:
        groups.setdefault(item["why"], []).append(item["layer"])
    return groups


def _vision_rows(check: dict) -> list[list[str]]:
    on = check.get("judged_on", "max")
    key = "mean_relative_error" if on == "mean" else "relative_error"
    return [[o["name"] + " vs PyTorch",
             f"max abs error {o['max_abs_error']:.3g}, mean {o['mean_abs_error']:.3g} "
             f"(relative {on} {o[key]:.2g}, limit {check['rtol']:g}), "
             f"cosine {o['cosine']:.6f}"]
            for o in check["outputs"]]


def _llm_rows(check: dict) -> list[list[str]]:
    logits = check["logits"]
    rows = [["logits vs PyTorch", f"max abs error {logits['max_abs_error']:.3g} "
                                  f"(relative {logits['relative_error']:.2g}, limit "
                                  f"{check['rtol']:g}), cosine {logits['cosine']:.6f}"],
            ["greedy tokens", f"{'same' if check['tokens_match'] else 'DIFFERENT'} "
                              f"({len(check['pytorch_tokens'])} tokens): "
                              f"{check['runtime_text']!r}"]]
    if not check["tokens_match"]:
        rows.append(["PyTorch tokens", repr(check["pytorch_text"])])
    artifact = check.get("vs_artifact")
    if artifact:  # the file against the artifact's own weights (a lossy mapping's cost)
        logits = artifact["logits"]
        same = "same" if artifact["tokens_match"] else "DIFFERENT"
        rows.append(["logits vs artifact", f"max abs error {logits['max_abs_error']:.3g} "
                                           f"(relative {logits['relative_error']:.2g}), "
                                           f"tokens {same}"])
    return rows
