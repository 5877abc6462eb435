"""The benchmark's Markdown output: regenerated sections leave the rest of the file alone."""

from benchmarks.llm_pruning_table import render_table
from benchmarks.markdown_section import replace_section


def test_replace_section_only_touches_its_markers(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n", encoding="utf-8")
    replace_section(path, "a", "first")
    replace_section(path, "b", "other")
    replace_section(path, "a", "second")
    text = path.read_text(encoding="utf-8")
    assert "intro" in text and "other" in text and "second" in text
    assert "first" not in text
    assert text.count("<!-- a:start -->") == 1


def test_table_has_a_row_per_variant_and_the_rss_bound():
    results = {
        "protocol": {"eval_windows": "all", "calib_samples": 32},
        "variants": {
            "dense": {"wiki_ppl": 20.0, "news_ppl": 30.0, "peak_rss_mb": 1000.0,
                      "fp32_model_mb": 500.0, "eval_windows": {"wikipedia": 142, "news": 147}},
            "wanda-50%": {"wiki_ppl": 40.0, "news_ppl": 60.0, "peak_rss_mb": 1200.0,
                          "fp32_model_mb": 500.0, "sparsity": 0.5, "prune_seconds": 100.0,
                          "seconds": {"capture": 1.0, "forward": 90.0, "owl": 0.0,
                                      "method": 5.0},
                          "block_method_seconds": [0.1, 0.2, 0.3],
                          "eval_windows": {"wikipedia": 142, "news": 147}},
        },
    }
    table = render_table(results, {"date": "d", "cpu": "c", "cores": 2, "torch": "t"})
    assert "| dense | 20.00 | 30.00 |" in table
    row = "| wanda-50% | 40.00 | 60.00 | 0.5000 | 100.0 | 91.0 | 5.00 | 200 ms [100-300] |"
    assert row in table
    assert "2548 MB" in table
