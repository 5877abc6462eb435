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
        kind = "packages" if chunks[0]["file"].endswith(".mlpackage") else "files"
        where = f"{len(chunks)} {kind}: {chunks[0]['file']} .. {chunks[-1]['file']}"
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
    int8 = report.details.get("int8_input_outliers")
    if int8:  # LiteRT chunks: how the int4 FCs' dynamic int8 inputs are scaled
        width = int8["slice_width"]
        rows.append(["int8 inputs", (f"a scale per token and slice of ~{width} inputs"
                                     if width else "a scale per token")
                     + f"; {int8['channels']} outlier channels of {int8['layers']} layers "
                       f"in float ({int8['float_bytes'] / 1e6:.2f} MB)"])
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
            ["greedy tokens", f"{_token_verdict(check)} "
                              f"({len(check['pytorch_tokens'])} tokens): "
                              f"{check['runtime_text']!r}"]]
    if not check["tokens_match"]:
        rows.append(["PyTorch tokens", repr(check["pytorch_text"])])
    forced = check.get("teacher_forced")
    if forced:
        rows.append(["teacher-forced", _teacher_forced(forced)])
    emulated = check.get("vs_emulated")
    if emulated:  # the runtime's int8 inputs emulated in PyTorch (LiteRT chunks)
        logits = emulated["logits"]
        rows.append(["logits vs emulated", f"max abs error {logits['max_abs_error']:.3g} "
                                           f"(relative {logits['relative_error']:.2g}; "
                                           "PyTorch with the runtime's int8 inputs)"])
    artifact = check.get("vs_artifact")
    if artifact:  # the file against the artifact's own weights (a lossy mapping's cost)
        logits = artifact["logits"]
        same = "same" if artifact["tokens_match"] else "DIFFERENT"
        rows.append(["logits vs artifact", f"max abs error {logits['max_abs_error']:.3g} "
                                           f"(relative {logits['relative_error']:.2g}), "
                                           f"tokens {same}"])
    return rows


def _token_verdict(check: dict) -> str:
    if check["tokens_match"]:
        return "same"
    if check.get("tokens_agree"):
        return "same up to near ties"
    return "DIFFERENT"


def _teacher_forced(forced: dict) -> str:
    """PyTorch fed the runtime's tokens: where its choice differs, and by how much it
    preferred its own token there (export.llm.near_ties)."""
    places = ", ".join(f"token {p} (PyTorch's margin {m:g})" for p, m in
                       zip(forced["teacher_forced_disagreements"], forced["pytorch_margins"],
                           strict=True))
    ties = len(forced["near_ties"])
    return (f"PyTorch differs at {places}; {ties} of "
            f"{len(forced['teacher_forced_disagreements'])} near ties (margin < "
            f"{forced['tie_margin']:g})")
