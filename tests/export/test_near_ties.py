"""Teacher-forced token agreement (export.llm.near_ties) against hand-built logit rows,
and how `--accuracy-level auto` and the verdict use it."""

from __future__ import annotations

import numpy as np
import pytest

from export.llm.check import LlmVerification
from export.llm.near_ties import TIE_MARGIN, generated_rows, teacher_forced_agreement
from export.verify import agreement


def _rows(choices: list[int], runner_up: list[int], margins: list[float],
          vocab: int = 8) -> np.ndarray:
    """Rows whose argmax is `choices[i]`, with `runner_up[i]` below it by `margins[i]`
    and every other token far below."""
    rows = np.full((len(choices), vocab), -10.0)
    for i, (best, second, margin) in enumerate(zip(choices, runner_up, margins,
                                                   strict=True)):
        rows[i, best] = 5.0
        rows[i, second] = 5.0 - margin
    return rows


def test_no_disagreement_means_no_ties() -> None:
    rows = _rows([1, 2, 3], [4, 4, 4], [1.0, 1.0, 1.0])
    result = teacher_forced_agreement(rows, [1, 2, 3])
    assert result.disagreements == [] and result.only_near_ties and result.positions == 3


def test_a_disagreement_inside_the_margin_is_a_near_tie_and_outside_it_is_not() -> None:
    rows = _rows([1, 2, 3, 5], [6, 4, 7, 0], [0.05, 1.0, 0.5, 0.099])
    result = teacher_forced_agreement(rows, [6, 2, 7, 0])  # differs at 0, 2 and 3
    assert result.disagreements == [0, 2, 3]
    assert result.margins == pytest.approx([0.05, 0.5, 0.099])
    assert result.near_ties == [0, 3] and not result.only_near_ties
    assert teacher_forced_agreement(rows[[0, 1, 3]], [6, 2, 0]).only_near_ties
    assert TIE_MARGIN == 0.1


def test_generated_rows_start_at_the_prompts_last_position() -> None:
    logits = np.arange(7 * 2).reshape(7, 2)  # prompt of 4, then 3 runtime tokens fed
    rows = generated_rows(logits, 4, 4)
    assert rows.shape == (4, 2) and rows[0].tolist() == [6, 7]
    with pytest.raises(ValueError, match="reference rows"):
        teacher_forced_agreement(rows[:2], [1, 2, 3])


def _verification(runtime: list[int], forced_rows: np.ndarray) -> LlmVerification:
    reference = np.ones((2, 4), dtype=np.float32)
    check = LlmVerification("onnxruntime", agreement("logits", reference, reference),
                            [1, 2, 3], runtime, 2, 0.0)
    check.agreement = teacher_forced_agreement(forced_rows, runtime)
    return check


def test_near_ties_count_only_where_the_exporter_allows_them() -> None:
    tie = _verification([1, 6, 3], _rows([1, 2, 3], [4, 6, 4], [1.0, 0.05, 1.0]))
    assert not tie.tokens_match and not tie.tokens_agree  # a float file must match
    tie.allow_near_ties = True
    assert tie.tokens_agree
    data = tie.to_dict()
    assert data["tokens_agree"] and data["teacher_forced"]["near_ties"] == [1]
    real = _verification([1, 6, 3], _rows([1, 2, 3], [4, 6, 4], [1.0, 0.5, 1.0]))
    real.allow_near_ties = True
    assert not real.tokens_agree
