"""The fixed evaluation windows over a token stream."""

from __future__ import annotations

import pytest
import torch

from toolkit.data import eval_windows
from toolkit.errors import UserError

STREAM = torch.arange(1050, dtype=torch.int64)  # 10 windows of 100 and a tail of 50


def test_all_windows_are_the_stream_slices():
    windows = eval_windows(STREAM, seq_len=100, count=None)
    assert windows.shape == (10, 100) and windows.dtype == torch.int64
    for k in range(10):
        assert torch.equal(windows[k], STREAM[k * 100 : (k + 1) * 100])


def test_windows_do_not_overlap_and_tail_is_dropped():
    windows = eval_windows(STREAM, seq_len=100, count=None)
    assert torch.equal(windows.flatten(), STREAM[:1000])


def test_count_picks_evenly_spaced_windows():
    windows = eval_windows(STREAM, seq_len=100, count=4)
    starts = windows[:, 0].tolist()
    # torch.linspace(0, 9, 4) = [0, 3, 6, 9]
    assert starts == [0, 300, 600, 900]
    for row in windows:
        start = int(row[0])
        assert torch.equal(row, STREAM[start : start + 100])


def test_count_rounds_linspace_and_is_deterministic():
    windows = eval_windows(STREAM, seq_len=100, count=3)
    assert windows[:, 0].tolist() == [0, 400, 900]  # linspace(0, 9, 3) = [0, 4.5, 9] -> 4
    assert torch.equal(windows, eval_windows(STREAM, seq_len=100, count=3))
    assert eval_windows(STREAM, seq_len=100, count=1)[:, 0].tolist() == [0]


def test_count_at_least_total_gives_all():
    all_windows = eval_windows(STREAM, seq_len=100, count=None)
    assert torch.equal(eval_windows(STREAM, seq_len=100, count=10), all_windows)
    assert torch.equal(eval_windows(STREAM, seq_len=100, count=50), all_windows)


def test_result_does_not_alias_the_stream():
    stream = STREAM.clone()
    eval_windows(stream, seq_len=100, count=None)[0, 0] = -1
    assert stream[0] == 0


def test_stream_shorter_than_one_window_is_a_user_error():
    with pytest.raises(UserError, match=r"99 tokens.*--seq-len 100"):
        eval_windows(STREAM[:99], seq_len=100, count=None)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError):
        eval_windows(STREAM, seq_len=0, count=None)
    with pytest.raises(UserError):
        eval_windows(STREAM, seq_len=100, count=0)
