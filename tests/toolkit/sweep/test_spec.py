"""The sweep spec: grid expansion, strict keys, empty grids and bad knobs refused in one
line with exit code 2 before any work (nothing is created under --out)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from toolkit.errors import UserError
from toolkit.sweep.spec import load_spec, spec_from_dict

SWEEPS = sorted((Path(__file__).parents[3] / "sweeps").glob("*.yaml"))
BASE = {"model": "fake-llama", "calibration": {"samples": 4, "seq_len": 64},
        "eval": {"windows": 2, "seq_len": 64, "kick_questions": 8, "mmlu_questions": 4}}


def spec(**extra):
    return spec_from_dict({**BASE, **extra}, Path("s.yaml"))


def test_grid_is_the_product_of_slots_and_axes():
    grid = {"stages": [
        {"method": "wanda", "vary": {"sparsity": [0.3, 0.5]}},
        {"vary": {"method": ["rtn", "gptq"], "bits": [3, 4]}, "group_size": 32},
        [None, {"method": "distill", "steps": 5}],
    ]}
    # distill after quantization is refused by the recipe parser, so the last slot is
    # checked on a grid where it may follow pruning only.
    with pytest.raises(UserError, match="comes after quantization"):
        spec(grid=grid)
    grid["stages"] = [grid["stages"][0], grid["stages"][2], grid["stages"][1]]
    points = spec(grid=grid).points
    assert len(points) == 2 * 2 * 4
    names = [p.name for p in points]
    assert len(set(names)) == len(names)
    assert names[0] == "wanda-sparsity0.3+rtn-bits3"
    assert "wanda-sparsity0.5+distill+gptq-bits4" in names
    point = points[names.index("wanda-sparsity0.5+distill+gptq-bits4")]
    assert point.stages == [{"method": "wanda", "sparsity": 0.5},
                            {"method": "distill", "steps": 5},
                            {"method": "gptq", "bits": 4, "group_size": 32}]
    assert [s.method for s in point.recipe.stages] == ["wanda", "distill", "gptq"]
    assert point.recipe.stages[2].bits == 4 and point.recipe.stages[2].group_size == 32


def test_points_and_grid_together_and_dense_point():
    result = spec(grid={"stages": [{"method": "rtn", "vary": {"bits": [2, 4]}}]},
                  points=[{"name": "dense", "stages": []},
                          {"name": "pal", "stages": [{"method": "palettize", "bits": 4,
                                                      "group_rows": 16}]}])
    assert [p.name for p in result.points] == ["rtn-bits2", "rtn-bits4", "dense", "pal"]
    assert result.points[2].recipe is None and result.points[2].stages == []
    assert result.eval.kick_questions == 8 and result.eval.windows == 2


def test_list_valued_knobs_are_not_axes():
    result = spec(grid={"stages": [{"method": "palettize", "target_bits": 3.7,
                                    "bits_choices": [2, 4], "vary": {"group_rows": [8, 16]}}]})
    assert [(p.name, p.recipe.stages[0].group_rows, tuple(p.recipe.stages[0].bits_choices))
            for p in result.points] == [("palettize-group_rows8", 8, (2, 4)),
                                        ("palettize-group_rows16", 16, (2, 4))]


def test_colliding_short_names_get_the_fixed_knobs():
    result = spec(grid={"stages": [[{"method": "rtn", "group_size": 32},
                                    {"method": "rtn", "group_size": 64}]]})
    assert [p.name for p in result.points] == ["rtn-group_size32", "rtn-group_size64"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_parse(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    methods = {s.get("method") for p in data.get("points", []) for s in p["stages"]}
    if methods & {"rotate", "lora"}:
        from compress.config import registered_methods

        if not {"rotate", "lora"} <= set(registered_methods()):
            pytest.skip(f"{path.name} needs the rotate and lora methods")
    assert load_spec(path).points


@pytest.mark.parametrize("data, message", [
    ({**BASE, "grid": {"stages": [{"method": "rtn"}]}, "colour": 1},
     "unknown key 'colour': valid keys are model, calibration, eval, bench, grid, points"),
    ({**BASE, "eval": {"windows": 2, "questions": 3}, "points": []},
     "eval: unknown key 'questions': valid keys are windows, seq_len, kick_questions"),
    ({**BASE, "bench": {"runz": 3}, "grid": {"stages": [{"method": "rtn"}]}},
     "bench: unknown key 'runz'"),
    ({**BASE, "bench": {"embedding_bits": 3}, "grid": {"stages": [{"method": "rtn"}]}},
     "bench embedding_bits must be 4, 8 or null, not 3"),
    ({**BASE, "grid": {"stage": []}}, "grid: unknown key 'stage': valid keys are stages"),
    ({**BASE, "points": [{"name": "a", "stages": [], "notes": "x"}]},
     "point 1: unknown key 'notes': valid keys are name, stages"),
    ({**BASE, "calibration": {"samples": 4, "sed": 1}, "points": [{"name": "d", "stages": []}]},
     "calibration: unknown key 'sed'"),
    ({**BASE, "grid": {"stages": []}}, "the grid is empty"),
    ({**BASE, "grid": None}, "the grid is empty"),
    ({**BASE, "grid": {"stages": [[]]}}, "the grid is empty"),
    ({**BASE, "grid": {"stages": [{"method": "rtn", "vary": {"bits": []}}]}},
     "the grid is empty: vary bits lists no values"),
    ({**BASE, "grid": {"stages": [{"method": "rtn", "vary": {"bits": 4}}]}},
     "vary bits: 4 is not a list"),
    ({**BASE, "grid": {"stages": [{"method": "rtn", "vary": {"bitz": [2, 4]}}]}},
     "point 'rtn-bitz2': stage 1:"),
    ({**BASE, "grid": {"stages": [{"method": "quantum"}]}}, "point 'quantum': stage 1:"),
    ({**BASE, "points": [{"name": "a", "stages": []}, {"name": "a", "stages": []}]},
     "two points are named 'a'"),
    ({k: v for k, v in BASE.items()}, "has no points"),
])
def test_bad_specs_name_the_problem(data, message):
    with pytest.raises(UserError, match=None) as info:
        spec_from_dict(data, Path("s.yaml"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("data, extra, message", [
    ({**BASE, "grid": {"stages": [{"method": "gptq", "bits": 4, "dampnig": 0.1}]}}, [],
     "stage 1"),
    ({**BASE, "grid": {"stages": [{"method": "rtn", "unknown_axis": 1}]}}, [], "unknown_axis"),
    ({**BASE, "grid": {"stages": []}}, [], "the grid is empty"),
    ({**BASE, "shape": "round", "grid": {"stages": [{"method": "rtn"}]}}, [],
     "unknown key 'shape'"),
    ({**BASE, "points": [{"name": "d", "stages": []}]}, ["--budget", "size=150"],
     "is not KIND=NUMBER+UNIT"),
    ({**BASE, "points": [{"name": "d", "stages": []}]}, ["--budget", "size=1TB"],
     "size takes the units kB, KB, MB, GB"),
    ({**BASE, "points": [{"name": "d", "stages": []}]}, ["--budget", "weight=1MB"],
     "unknown limit 'weight'"),
    ({**BASE, "points": [{"name": "d", "stages": []}]}, ["--budget", "latency=40ms"],
     "--budget latency needs a latency: add --bench"),
    ({**BASE, "points": [{"name": "d", "stages": []}]}, ["--bench", "coreml"],
     "Core ML files run only on Apple devices"),
    ({**BASE, "model": "no/such/dir", "points": [{"name": "d", "stages": []}]}, [],
     "model no/such/dir is neither a registered name nor an existing path"),
    ({**{k: v for k, v in BASE.items() if k != "model"}, "points": [{"name": "d",
                                                                      "stages": []}]}, [],
     "names no model"),
])
def test_cli_refuses_in_one_line_before_any_work(toolkit_cli, tmp_path, data, extra, message):
    out = tmp_path / "sweep"
    result = toolkit_cli("sweep", write(tmp_path, data), "--out", out, *extra)
    assert result.code == 2, result.err
    assert len(result.err_lines) == 1 and message in result.err, result.err
    assert not out.exists()


def test_cli_refuses_a_folder_that_is_not_a_sweep(toolkit_cli, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = toolkit_cli("sweep", write(tmp_path, {**BASE, "points": [
        {"name": "d", "stages": []}]}), "--out", out)
    assert result.code == 2 and len(result.err_lines) == 1
    assert "holds files that are not a sweep's" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_cli_refuses_a_missing_spec(toolkit_cli, tmp_path):
    result = toolkit_cli("sweep", tmp_path / "nope.yaml", "--out", tmp_path / "o")
    assert result.code == 2 and "does not exist" in result.err and len(result.err_lines) == 1


def test_help_renders_and_lists_every_option(toolkit_cli):
    result = toolkit_cli("sweep", "--help")
    assert result.code == 0
    for flag in ("--out", "--model", "--jobs", "--threads", "--bench", "--ray",
                 "--ray-timeout", "--budget", "--quiet"):
        assert flag in result.out, flag
