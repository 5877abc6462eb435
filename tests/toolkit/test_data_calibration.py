"""Seeded calibration sampling, user calibration files and the batch hash."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from toolkit.data import read_calibration_file, sample_calibration, token_hash
from toolkit.errors import UserError

POOL = torch.arange(1000, 3000, dtype=torch.int64)


def test_sample_matches_independent_recomputation():
    batch = sample_calibration(POOL, n=8, seq_len=64, seed=7)
    torch.manual_seed(7)
    offsets = torch.randint(0, len(POOL) - 64, (8,))
    expected = torch.stack([POOL[o : o + 64] for o in offsets.tolist()])
    assert torch.equal(batch, expected)


def test_sample_shape_and_dtype():
    batch = sample_calibration(POOL, n=5, seq_len=33, seed=0)
    assert batch.shape == (5, 33)
    assert batch.dtype == torch.int64
    # Each row is a contiguous slice of the pool (the pool here counts up by one).
    assert torch.equal(batch[:, 1:] - batch[:, :-1], torch.ones(5, 32, dtype=torch.int64))


def test_same_seed_same_batch_other_seed_other_batch():
    first = sample_calibration(POOL, n=4, seq_len=16, seed=3)
    assert torch.equal(first, sample_calibration(POOL, n=4, seq_len=16, seed=3))
    assert not torch.equal(first, sample_calibration(POOL, n=4, seq_len=16, seed=4))


def test_smallest_pool_that_works():
    batch = sample_calibration(POOL[:17], n=3, seq_len=16, seed=1)
    assert torch.equal(batch, POOL[:16].expand(3, 16))  # randint(0, 1) can only give 0


def test_too_short_pool_is_a_user_error():
    with pytest.raises(UserError, match=r"16 tokens.*--seq-len 16.*smaller --seq-len"):
        sample_calibration(POOL[:16], n=2, seq_len=16, seed=0)


def test_bad_counts_are_user_errors():
    with pytest.raises(UserError):
        sample_calibration(POOL, n=0, seq_len=16, seed=0)
    with pytest.raises(UserError):
        sample_calibration(POOL, n=2, seq_len=0, seed=0)


def test_token_hash_is_sha256_of_int64_little_endian():
    tokens = torch.tensor([[1, 2], [3, 256]], dtype=torch.int32)
    expected = hashlib.sha256(np.array([1, 2, 3, 256], dtype="<i8").tobytes()).hexdigest()
    assert token_hash(tokens) == expected
    assert token_hash(tokens.T.contiguous().T) == expected  # layout does not matter
    assert token_hash(tokens + 1) != expected


def test_read_plain_text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("first paragraph\n\nsecond one\n", encoding="utf-8")
    assert read_calibration_file(path) == "first paragraph\n\nsecond one\n"


def test_read_jsonl(tmp_path):
    path = tmp_path / "calib.jsonl"
    rows = [{"text": "alpha", "id": 1}, {"text": "beta"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_calibration_file(path) == "alpha\n\nbeta"


def test_jsonl_detected_by_content(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text('\n{"text": "alpha"}\n{"text": "beta"}\n', encoding="utf-8")
    assert read_calibration_file(str(path)) == "alpha\n\nbeta"


def test_jsonl_line_without_text_is_a_user_error(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text('{"text": "alpha"}\n{"content": "beta"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r'calib\.jsonl line 2 has no "text"') as info:
        read_calibration_file(path)
    assert "\n" not in str(info.value)


def test_jsonl_bad_json_is_a_user_error(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text('{"text": "alpha"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2 is not valid JSON"):
        read_calibration_file(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.txt", ""), ("blank.txt", " \n\n "), ("empty.jsonl", '{"text": ""}\n')],
)
def test_empty_file_is_a_user_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=rf"{name} holds no text"):
        read_calibration_file(path)


def test_non_utf8_is_a_user_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt is not UTF-8.*UTF-8"):
        read_calibration_file(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"nope\.txt not found"):
        read_calibration_file(tmp_path / "nope.txt")
