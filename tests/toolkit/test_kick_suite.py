"""The knowledge suite (`toolkit eval --suite kick`) and `--compare`, on tiny fake models.

Scores of a random-weight model mean nothing; these tests check the machinery: prompts,
cached and batched greedy decoding against a plain recomputation, determinism, the JSON,
the result cache, the side-by-side table and its "perplexity hides damage" flag (on
synthetic cached results where the flag's conditions are known).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from toolkit.data.analogy_questions import factoid_questions
from toolkit.data.sampling import spread_sample
from toolkit.eval import EvalProtocol
from toolkit.eval.compare import (
    HIDES_DAMAGE,
    KNOWLEDGE_DROP,
    CompareEntry,
    compare_table,
    damage_flag,
)
from toolkit.eval.factoid import FEW_SHOT, open_book_passage
from toolkit.eval.generate import encode_prompt, greedy_answers
from toolkit.eval.kick import KickProtocol, KickResult, Score, run_kick_suite
from toolkit.eval.kick_cache import cache_path, file_fingerprint, write_cached
from toolkit.eval.mmlu import choice_log_likelihoods

SMALL_COMPRESS = ["--calib-samples", "4", "--seq-len", "32", "--eval-windows", "2",
                  "--eval-seq-len", "64", "--quiet", "--method", "magnitude"]
QUICK_KICK = ["--eval-windows", "2", "--eval-seq-len", "64", "--quiet"]


@pytest.fixture(scope="module")
def questions():
    return factoid_questions()


# --- question selection and prompts ------------------------------------------------


def test_spread_sample_covers_every_section_and_is_deterministic(questions):
    picked = spread_sample(questions, lambda q: q.section, 8, seed=0)
    assert len(picked) == 8
    assert {q.section for q in picked} == {q.section for q in questions}
    assert all(sum(q.section == s for q in picked) == 2 for s in {q.section for q in picked})
    assert picked == spread_sample(questions, lambda q: q.section, 8, seed=0)
    assert picked != spread_sample(questions, lambda q: q.section, 8, seed=1)
    assert [questions.index(q) for q in picked] == sorted(questions.index(q) for q in picked)
    assert spread_sample(questions, lambda q: q.section, None, seed=0) == questions
    assert spread_sample(questions, lambda q: q.section, 10_000, seed=0) == questions


def test_few_shot_examples_are_not_in_the_question_set(questions):
    asked = {q.question for q in questions}
    subjects = {q.subject for q in questions}
    for example in FEW_SHOT:
        assert example.question not in asked
        assert example.answer not in subjects
        assert all(fact.strip() + "." not in {q.fact() for q in questions}
                   for fact in example.passage.split(".") if fact.strip())


def test_open_book_passage_holds_the_fact_and_two_distractors(questions):
    question = next(q for q in questions if q.id == "currency:Argentina")
    passage = open_book_passage(question, questions, seed=0)
    facts = [f.strip() + "." for f in passage.split(".") if f.strip()]
    assert len(facts) == 3 and question.fact() in facts
    distractors = [f for f in facts if f != question.fact()]
    assert all(f.startswith("The currency of ") for f in distractors)
    assert not any("peso" in f for f in distractors)  # Mexico's peso is no distractor
    # Fixed by (seed, question): the same with a subsample as the pool of questions asked.
    assert passage == open_book_passage(question, questions, seed=0)
    others = {open_book_passage(question, questions, seed=s) for s in range(1, 6)}
    assert others - {passage}


# --- decoding and scoring ----------------------------------------------------------


@pytest.fixture(scope="module")
def lively_model():
    """A tiny Llama with large random weights, so greedy outputs differ between prompts
    (the registered fake model answers ':' to everything)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from models.fake_llm import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, initializer_range=1.0, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, tokenizer


def plain_greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """Greedy decoding by full recomputation: no cache, no batch, no padding."""
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + generated]), use_cache=False).logits
            token = int(logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            generated.append(token)
            if "\n" in tokenizer.decode(generated):
                break
    return tokenizer.decode(generated, skip_special_tokens=True)


def test_cached_batched_decoding_matches_plain_recomputation(lively_model):
    model, tokenizer = lively_model
    prefix = "Q: one\nA: two\n\n"
    prompts = ["Q: What is it?\nA:", "Q: Where?\nA:", "Q: Which US state is Reno in?\nA:",
               "x", "Hello there, general", "Q: a"]
    answers = greedy_answers(model, tokenizer, prompts, prefix=prefix, max_new_tokens=6,
                             batch_size=4)
    expected = [plain_greedy(model, tokenizer, encode_prompt(tokenizer, prefix)
                             + encode_prompt(tokenizer, p), 6) for p in prompts]
    assert answers == expected
    assert len(set(answers)) > 3  # the check above compares real, varied outputs
    # Without a shared prefix, and one prompt per batch, the answers are the same.
    assert greedy_answers(model, tokenizer, [prefix + p for p in prompts], max_new_tokens=6,
                          batch_size=1) == expected


def test_choice_log_likelihoods_match_a_direct_computation(lively_model):
    model, tokenizer = lively_model
    prompt = encode_prompt(tokenizer, "Question?\nA. x\nB. y\nAnswer:")
    # Byte-level: " A" is two tokens; the shared space joins the prompt, the letters differ.
    continuations = [encode_prompt(tokenizer, f" {letter}") for letter in "ABCD"]
    scores = choice_log_likelihoods(model, prompt, continuations, torch.device("cpu"))
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([prompt + continuations[0]
                                                                    [:1]])).logits[0, -1], -1)
    expected = [float(log_probs[c[1]]) for c in continuations]
    assert scores == pytest.approx(expected, abs=1e-5)
    # Continuations of several tokens, different lengths, no shared first token: summed
    # log-probabilities (the shorter one right-padded in the batch).
    long = [encode_prompt(tokenizer, text) for text in ("yes", "nope!")]
    scores = choice_log_likelihoods(model, prompt, long, torch.device("cpu"))
    for score, continuation in zip(scores, long, strict=True):
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=torch.tensor([prompt + continuation]))
                                     .logits[0], -1)
        direct = sum(float(full[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation))
        assert score == pytest.approx(direct, abs=1e-4)


# --- the suite -----------------------------------------------------------------------


def test_suite_is_deterministic_on_a_fake_model():
    import models

    protocol = KickProtocol(questions=4, mmlu_questions=4, perplexity=EvalProtocol(64, 2))
    runs = [run_kick_suite(models.create_model("fake-llama"), protocol, fingerprint="f")
            for _ in range(2)]
    first, second = (r.to_dict() for r in runs)
    for key in ("scores", "items", "sections", "protocol", "mmlu_blocks"):
        assert first[key] == second[key], key
    assert {s: v["n"] for s, v in first["scores"].items()} == {
        "factoid_closed_book": 4, "factoid_open_book": 4, "mmlu": 4, "ppl_wikipedia": 2,
        "ppl_news": 2}
    assert len({item["section"] for item in first["items"]["factoid_closed_book"]}) == 4
    assert KickResult.from_dict(json.loads(json.dumps(first))).to_dict() == first


def test_cli_kick_suite_end_to_end_and_cached(toolkit_cli, tmp_path):
    report = tmp_path / "kick.json"
    result = toolkit_cli("eval", "fake-llama", "--suite", "kick", "--kick-questions", 8,
                         "--json", report, *QUICK_KICK)
    assert result.code == 0, result.err
    for label in ("factoid closed-book", "factoid open-book", "MMLU dev",
                  "wikipedia perplexity", "news perplexity", "95% interval"):
        assert label in result.out
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["suite"] == "kick" and data["cached"] is False
    protocol = data["protocol"]
    assert protocol["questions"] == 8 and protocol["mmlu_questions"] == 8
    assert protocol["seed"] == 0
    assert protocol["perplexity"] == {"seq_len": 64, "windows": 2}
    assert protocol["version"].startswith("kick/")
    for name, score in data["scores"].items():
        assert score["low"] <= score["value"] <= score["high"], name
    for name in ("factoid_closed_book", "factoid_open_book", "mmlu"):
        assert data["scores"][name]["n"] == 8 and len(data["items"][name]) == 8
        assert 0 <= data["scores"][name]["low"] <= data["scores"][name]["high"] <= 1
    assert data["mmlu_blocks"] == {"found": 282, "parsed": 273, "skipped": 9}
    # Again: the cached result is reused, identical.
    again = toolkit_cli("eval", "fake-llama", "--suite", "kick", "--kick-questions", 8,
                        "--json", tmp_path / "again.json", *QUICK_KICK)
    assert again.code == 0, again.err
    cached = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    assert cached["cached"] is True and "cached result reused" in again.out
    assert cached["scores"] == data["scores"] and cached["items"] == data["items"]


def test_question_counts_from_the_flags():
    from toolkit.cli import build_parser
    from toolkit.commands.eval_cmd import kick_protocol
    from toolkit.eval.kick import DEFAULT_MMLU_QUESTIONS

    def protocol(*flags: str) -> KickProtocol:
        return kick_protocol(build_parser().parse_args(["eval", "fake-llama", *flags]),
                             "fake-llama")

    assert (protocol().questions, protocol().mmlu_questions) == (None, DEFAULT_MMLU_QUESTIONS)
    assert protocol("--kick-questions", "8").mmlu_questions == 8
    assert protocol("--kick-questions", "8", "--mmlu-questions", "all").mmlu_questions is None
    assert protocol("--mmlu-questions", "50").questions is None
    assert protocol("--eval-windows", "3").perplexity == EvalProtocol(windows=3)


def test_default_suite_keeps_the_perplexity_json(toolkit_cli, tmp_path):
    result = toolkit_cli("eval", "fake-llama", "--json", tmp_path / "ppl.json", *QUICK_KICK)
    assert result.code == 0, result.err
    data = json.loads((tmp_path / "ppl.json").read_text(encoding="utf-8"))
    assert set(data) == {"model", "eval_protocol", "metrics"}
    for stream in ("wikipedia", "news"):
        assert set(data["metrics"][stream]) == {"ppl", "mean_nll", "tokens", "windows",
                                                "seq_len"}


# --- compare -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(toolkit_cli, fake_model_dir, tmp_path_factory):
    """Two magnitude-pruned artifacts of the fake Llama (25 % and 50 %)."""
    tmp = tmp_path_factory.mktemp("kick-artifacts")
    dirs = []
    for sparsity in ("0.25", "0.5"):
        out = tmp / f"magnitude-{sparsity}"
        result = toolkit_cli("compress", "--model", fake_model_dir, "--out", out,
                             "--sparsity", sparsity, *SMALL_COMPRESS)
        assert result.code == 0, result.err
        dirs.append(out)
    return dirs


def test_compare_runs_the_dense_model_beside_the_artifact(toolkit_cli, artifacts,
                                                          fake_model_dir, tmp_path):
    report = tmp_path / "compare.json"
    result = toolkit_cli("eval", "--compare", artifacts[0], "--kick-questions", 2,
                         "--json", report, "--quiet")
    assert result.code == 0, result.err
    assert str(fake_model_dir) in result.out and str(artifacts[0]) in result.out
    assert "(dense)" in result.out and "closed-book" in result.out
    data = json.loads(report.read_text(encoding="utf-8"))
    rows = {row["model"]: row for row in data["models"]}
    assert list(rows) == [str(fake_model_dir), str(artifacts[0])]
    assert rows[str(fake_model_dir)]["dense"] is None
    assert rows[str(artifacts[0])]["dense"] == str(fake_model_dir)
    assert set(rows[str(artifacts[0])]["ppl_change"]) == {"ppl_wikipedia", "ppl_news"}
    # The artifact's recorded perplexity protocol is used for every model.
    assert data["protocol"]["perplexity"] == {"seq_len": 64, "windows": 2}
    # Run again: both results come from the cache.
    again = toolkit_cli("eval", "--compare", artifacts[0], "--kick-questions", 2, "--quiet")
    assert again.code == 0, again.err
    assert "cached results reused for" in again.out


def synthetic_result(closed: tuple[int, int], wiki: float, news: float) -> KickResult:
    def ppl(value: float) -> Score:
        return Score(value, value * 0.95, value * 1.05, 16, "perplexity")

    return KickResult(
        model="synthetic", fingerprint="synthetic", protocol={}, sections={},
        mmlu_blocks={}, items={}, seconds={}, versions={},
        scores={"factoid_closed_book": Score.accuracy(*closed),
                "factoid_open_book": Score.accuracy(*closed),
                "mmlu": Score.accuracy(25, 100, chance=0.25),
                "ppl_wikipedia": ppl(wiki), "ppl_news": ppl(news)})


def test_damage_flag_rules():
    dense = synthetic_result((80, 100), 20.0, 30.0)
    assert damage_flag(dense, synthetic_result((50, 100), 20.6, 31.0)) == HIDES_DAMAGE
    assert damage_flag(dense, synthetic_result((50, 100), 26.0, 31.0)) == KNOWLEDGE_DROP
    assert damage_flag(dense, synthetic_result((50, 100), 20.0, 26.5)) == KNOWLEDGE_DROP  # -12 %
    assert damage_flag(dense, synthetic_result((50, 100), 20.0, 27.5)) == HIDES_DAMAGE  # -8 %
    # The dense accuracy 0.8 inside the interval of 74/100 ([0.65, 0.82]): no drop.
    assert damage_flag(dense, synthetic_result((74, 100), 20.1, 30.1)) == ""
    # A small sample cannot show a drop: 2/4 has an interval reaching above 0.8.
    assert damage_flag(dense, synthetic_result((2, 4), 20.1, 30.1)) == ""
    table = compare_table([CompareEntry("dense", dense),
                           CompareEntry("a", synthetic_result((50, 100), 20.6, 31.0), "dense")])
    assert HIDES_DAMAGE.upper() in table and "+3.0%" in table


def test_compare_flags_hidden_damage_from_cached_results(toolkit_cli, artifacts,
                                                         fake_model_dir, tmp_path):
    """Synthetic results cached under the artifacts' keys: compare computes nothing and
    must flag the artifact whose knowledge fell while its perplexity held."""
    protocol = KickProtocol(questions=4, mmlu_questions=4, perplexity=EvalProtocol(64, 2))
    planted = {fake_model_dir: synthetic_result((170, 213), 20.0, 30.0),
               artifacts[0]: synthetic_result((120, 213), 20.8, 31.5),  # +4 %, +5 %
               artifacts[1]: synthetic_result((165, 213), 35.0, 50.0)}  # knowledge kept
    for spec, result in planted.items():
        write_cached(cache_path(file_fingerprint(str(spec)), protocol, "cpu"),
                     dataclasses.replace(result, model=str(spec)))
    report = tmp_path / "flags.json"
    result = toolkit_cli("eval", "--compare", *artifacts, "--kick-questions", 4,
                         "--json", report, "--quiet")
    assert result.code == 0, result.err
    rows = {Path(row["model"]).name: row
            for row in json.loads(report.read_text(encoding="utf-8"))["models"]}
    assert rows[artifacts[0].name]["flag"] == HIDES_DAMAGE
    assert rows[artifacts[0].name]["knowledge_dropped"] is True
    assert rows[artifacts[1].name]["flag"] == ""
    assert rows[fake_model_dir.name]["flag"] == "" and rows[fake_model_dir.name]["dense"] is None
    flagged = [line for line in result.out.splitlines() if HIDES_DAMAGE.upper() in line]
    assert len(flagged) == 1 and str(artifacts[0]) in flagged[0]
    assert "cached results reused for" in result.out


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "needle"), [
    (["eval", "fake-llama", "--kick-questions", "4"], "--suite kick"),
    (["eval", "fake-llama", "--no-cache"], "--suite kick"),
    (["eval", "fake-llama", "--mmlu-questions", "all"], "--suite kick"),
    (["eval", "fake-llama", "--compare", "fake-llama"], "--compare takes every model"),
    (["eval", "--suite", "ppl", "--compare", "fake-llama"], "drop --suite ppl"),
    (["eval", "--compare", "/no/such/artifact"], "does not exist"),
    (["eval", "--suite", "kick"], "no model given"),
])
def test_bad_kick_arguments_are_one_line_errors(toolkit_cli, argv, needle):
    result = toolkit_cli(*argv)
    assert result.code == 2, (result.code, result.err)
    assert len(result.err_lines) == 1 and needle in result.err_lines[0]
    assert "Traceback" not in result.err


def test_compare_reports_a_missing_dense_model(toolkit_cli, artifacts, tmp_path):
    import shutil

    moved = tmp_path / "orphan"
    shutil.copytree(artifacts[0], moved)
    manifest = json.loads((moved / "toolkit.json").read_text(encoding="utf-8"))
    manifest["source_model"] = str(tmp_path / "deleted-dense-model")
    (moved / "toolkit.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = toolkit_cli("eval", "--compare", moved, "--quiet")
    assert result.code == 2
    assert len(result.err_lines) == 1 and "deleted-dense-model" in result.err_lines[0]
