"""benchmarks/markdown_section.py: a section replaced in place, appended when missing, and
a benchmark's run-or-render step (the data kept, then read back without running)."""

from __future__ import annotations

import json

from benchmarks.markdown_section import replace_section, run_or_render


def test_replace_section_in_place_and_appended(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# B\n\n<!-- a:start -->\nold\n<!-- a:end -->\n\ntail\n")
    replace_section(path, "a", "new")
    replace_section(path, "b", "second")
    assert path.read_text() == ("# B\n\n<!-- a:start -->\nnew\n<!-- a:end -->\n\ntail\n\n"
                                "<!-- b:start -->\nsecond\n<!-- b:end -->\n")


def test_run_or_render_keeps_the_data_and_renders_it_again(tmp_path):
    results, markdown_path = tmp_path / "r.json", tmp_path / "B.md"
    calls = []

    def run():
        calls.append(1)
        return {"x": 3}

    text = run_or_render(False, results, markdown_path, "s", run, lambda d: f"x = {d['x']}")
    assert text == "x = 3" and json.loads(results.read_text()) == {"x": 3}
    results.write_text(json.dumps({"x": 4}))
    again = run_or_render(True, results, markdown_path, "s", run, lambda d: f"x = {d['x']}")
    assert again == "x = 4" and calls == [1]
    assert "<!-- s:start -->\nx = 4\n<!-- s:end -->" in markdown_path.read_text()
