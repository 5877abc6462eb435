"""Point keys: the same recipe gives the same key however it is written; a knob, the
protocol or a method's source changes only the keys of the points it concerns."""

from __future__ import annotations

import inspect
from pathlib import Path

from toolkit.sweep import points as points_module
from toolkit.sweep.points import resolve_points
from toolkit.sweep.spec import spec_from_dict

BASE = {"model": "fake-llama", "calibration": {"samples": 4, "seq_len": 64}}


def keys(data: dict) -> dict[str, str]:
    spec = spec_from_dict({**BASE, **data}, Path("s.yaml"))
    return {p.name: p.key for p in resolve_points(spec, "fake-llama", Path("/unused"))}


POINTS = {"points": [{"name": "rtn", "stages": [{"method": "rtn", "bits": 4}]},
                     {"name": "wanda", "stages": [{"method": "wanda", "sparsity": 0.5}]},
                     {"name": "dense", "stages": []}]}


def test_defaults_written_out_or_not_give_one_key():
    spelled = {"points": [{"name": "rtn", "stages": [{"method": "rtn", "bits": 4,
                                                      "group_size": 64,
                                                      "symmetric": False}]}]}
    assert keys(spelled)["rtn"] == keys(POINTS)["rtn"]


def test_knobs_and_protocol_change_keys():
    base = keys(POINTS)
    other_bits = keys({"points": [{"name": "rtn", "stages": [{"method": "rtn", "bits": 3}]}]})
    assert other_bits["rtn"] != base["rtn"]
    longer_eval = keys({**POINTS, "eval": {"windows": 4}})
    assert all(longer_eval[name] != base[name] for name in base)


def test_editing_a_method_changes_only_its_points(tmp_path, monkeypatch):
    base = keys(POINTS)
    from compress.quant import rtn

    edited = tmp_path / "rtn.py"
    edited.write_text(Path(inspect.getsourcefile(rtn)).read_text() + "\n# edited\n")
    real = inspect.getsourcefile

    def getsourcefile(thing):
        found = real(thing)
        return str(edited) if found == real(rtn) else found

    monkeypatch.setattr(points_module.inspect, "getsourcefile", getsourcefile)
    after = keys(POINTS)
    assert after["rtn"] != base["rtn"]
    assert after["wanda"] == base["wanda"] and after["dense"] == base["dense"]
