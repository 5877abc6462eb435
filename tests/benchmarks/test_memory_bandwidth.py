"""The bandwidth probe: its statistics and GB/s arithmetic against hand-computed numbers, the
sysfs cache parsing, and one tiny real sweep (4 MiB) for the shape of the result."""

import json

import pytest
import torch

from benchmarks.memory_bandwidth import (
    decode_bound,
    last_level_cache_bytes,
    main,
    read_bandwidth,
    summarize,
    time_sweeps,
)


def test_summary_is_median_with_min_max_spread() -> None:
    assert summarize([3.0, 1.0, 2.0, 10.0]) == {
        "gb_per_s": 2.5, "min_gb_per_s": 1.0, "max_gb_per_s": 10.0,
        "samples_gb_per_s": [3.0, 1.0, 2.0, 10.0]}
    with pytest.raises(ValueError, match="repeats"):
        summarize([])


def test_each_sweep_is_bytes_over_its_own_seconds() -> None:
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 4.0])  # sweeps of 0.5 s, 0.25 s, 2 s
    calls = []
    rates = time_sweeps(lambda: calls.append(1), nbytes=3_000_000_000, repeats=3,
                        clock=lambda: next(ticks))
    assert rates == pytest.approx([6.0, 12.0, 1.5])
    assert len(calls) == 3


def test_decode_bound_is_bytes_over_bandwidth() -> None:
    bound = decode_bound(bytes_per_token=90e6, gb_per_s=9.0)  # 90 MB at 9 GB/s
    assert bound["seconds_per_token"] == pytest.approx(0.01)
    assert bound["tokens_per_s"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        decode_bound(0, 9.0)


def test_largest_sysfs_cache_in_bytes(tmp_path) -> None:
    for index, size in {"index0": "48K", "index2": "2048K", "index3": "480M"}.items():
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    assert last_level_cache_bytes(tmp_path) == 480 * 2**20
    assert last_level_cache_bytes(tmp_path / "absent") is None


def test_real_sweep_reports_spread_and_restores_threads() -> None:
    before = torch.get_num_threads()
    result = read_bandwidth(threads=2, nbytes=4 * 2**20 + 3, repeats=3)
    assert torch.get_num_threads() == before
    assert result["nbytes"] == 4 * 2**20  # whole float32 elements only
    assert result["threads"] == 2 and len(result["samples_gb_per_s"]) == 3
    assert len(result["load_average_1min"]) == 2
    assert 0 < result["min_gb_per_s"] <= result["gb_per_s"] <= result["max_gb_per_s"]
    with pytest.raises(ValueError, match="threads"):
        read_bandwidth(threads=0, nbytes=1024)


def test_cli_prints_one_json_result_per_size_and_thread_count(capsys) -> None:
    main(["--threads", "1", "2", "--nbytes", str(2**20), str(2**21), "--repeats", "2"])
    results = json.loads(capsys.readouterr().out)
    assert [(r["nbytes"], r["threads"]) for r in results] == [
        (2**20, 1), (2**20, 2), (2**21, 1), (2**21, 2)]
    assert results[0]["repeats"] == 2
