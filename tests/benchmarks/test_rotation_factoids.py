"""benchmarks/rotation_factoids.py on the committed results: every try's goal decided
again here from its own numbers, and the seed spread from the rows themselves."""

from __future__ import annotations

from benchmarks import rotation_factoids


def test_goals_follow_from_each_rows_numbers():
    data = rotation_factoids.collect()
    dense = data["dense"]
    low, high = dense["closed_book_ci_pct"]
    assert len(data["rows"]) >= 7
    for row in data["rows"]:
        within = row["wiki_ppl"] <= 1.10 * dense["wiki_ppl"]
        inside = low <= row["closed_book_pct"] <= high
        assert row["goal"] == (within and inside), row["name"]
    seeds = sorted(r["rotation_seed"] for r in data["rows"]
                   if r["rotation_seed"] is not None and not r["learned_steps"]
                   and r["group_size"] == 64
                   and not r["lora"] and r["calibration"]["samples"] == 32)
    assert seeds == [0, 1, 2]
    assert len(data["seed_closed_book_pct"]) == 3
    text = rotation_factoids.markdown(data)
    rotated = [r for r in data["rows"] if r["rotation_seed"] is not None]
    assert text.count("| rotate") == len(rotated) + 1  # + the origin check's rotated row
    assert "(no rotation)" in text
    more_text = [r for r in data["rows"] if r["from"] == rotation_factoids.LORA_DATA]
    assert more_text and all(r["lora"] and r["lora_windows"] == 1600 for r in more_text)
    assert all(f"{r['name']} (rotation seed {r['rotation_seed']}): {r['wiki_ppl']:.2f}" in text
               for r in more_text)
    learned = data["learned"]
    assert learned["kept"] == (learned["held_out_kl_after"] < learned["held_out_kl_before"])
    assert f"{learned['held_out_kl_after']:.3f} nats per token" in text
    assert [r["learned_steps"] for r in data["rows"]
            if r["name"] == "rotate-learned+gptq-4b-g64"] == [learned["steps"]]
    assert [row["rotation_seed"] is None for row in data["origin"]] == [True, False]
    assert {row["method"] for row in data["origin"]} == {"rtn"}
