"""The knowledge suite (`toolkit eval --suite kick`): scores beyond perplexity, each with a
95 % interval, after LLM-KICK (Jaiswal et al., arXiv 2310.01382), which shows that
compressed LLMs can keep their perplexity while losing knowledge and retrieval ability.

    factoid_closed_book  analogy-set facts asked without context (knowledge in the weights)
    factoid_open_book    the same questions with the fact in a short passage (retrieval)
    mmlu                 MMLU dev questions, letter log-likelihood (chance 0.25); 120 of
                         the 273 by default, the rest of the suite asks every question
    ppl_wikipedia        perplexity, the `toolkit eval` protocol, bootstrap over windows
    ppl_news

Accuracies carry Wilson intervals and perplexities percentile-bootstrap intervals
(toolkit.eval.intervals). Results are cached per model and protocol (toolkit.eval.kick_cache)
so that `toolkit eval --compare` does not recompute them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from models import LoadedModel
from toolkit.data import cached_streams
from toolkit.data.analogy_questions import ANALOGY_FILE, SECTIONS, factoid_questions
from toolkit.data.mmlu_dev import load_mmlu_dev
from toolkit.data.sampling import spread_sample
from toolkit.eval.factoid import DISTRACTORS, FEW_SHOT, FactoidOutcome, run_factoid
from toolkit.eval.intervals import BOOTSTRAP_SAMPLES, bootstrap_ppl_interval, wilson_interval
from toolkit.eval.mmlu import CHANCE, run_mmlu
from toolkit.eval.protocol import EvalProtocol, evaluate_perplexities
from toolkit.manifest import library_versions, timestamp

# Bump when prompts, scoring or sampling change: cached results of another version are
# never reused.
SUITE_VERSION = "kick/1"
DEFAULT_MMLU_QUESTIONS = 120
SCORE_LABELS = {
    "factoid_closed_book": "factoid closed-book (accuracy)",
    "factoid_open_book": "factoid open-book (accuracy)",
    "mmlu": "MMLU dev (accuracy)",
    "ppl_wikipedia": "wikipedia perplexity",
    "ppl_news": "news perplexity",
}
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class KickProtocol:
    """Everything that decides the suite's numbers; recorded in every result."""

    # Factoid questions (of 213), spread over the sections; None = all.
    questions: int | None = None
    # MMLU questions (of 273), spread over the subjects; None = all. MMLU prompts are long
    # (114 tokens on average) and a 135M model is at chance on them, so by default a
    # subsample keeps the suite near 2 minutes on 2 CPU cores.
    mmlu_questions: int | None = DEFAULT_MMLU_QUESTIONS
    seed: int = 0  # question subsamples and open-book passage order
    max_new_tokens: int = 8  # the answers are a word or two
    # Prompts decoded together: decoding one token for 32 rows costs little more than for
    # 8, and the few-shot prefix is shared, so larger batches mostly save steps.
    batch_size: int = 32
    perplexity: EvalProtocol = EvalProtocol()
    bootstrap_samples: int = BOOTSTRAP_SAMPLES

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SUITE_VERSION, "questions": self.questions or "all",
            "mmlu_questions": self.mmlu_questions or "all", "seed": self.seed,
            "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size,
            "perplexity": self.perplexity.to_dict(),
            "bootstrap_samples": self.bootstrap_samples, "bootstrap_seed": self.seed,
            "factoid_source": f"gensim {ANALOGY_FILE}", "factoid_sections": list(SECTIONS),
            "few_shot": [ex.question for ex in FEW_SHOT], "open_book_distractors": DISTRACTORS,
            "mmlu_source": "lm_eval 0.4.13 mmlu/flan_cot_fewshot/_cot_prompts.json",
            "mmlu_scoring": "zero-shot, log p(' A'..' D' | prompt)",
            "special_tokens": False, "intervals": "95%: Wilson (accuracy), "
                                                 "percentile bootstrap over windows (ppl)",
        }


@dataclasses.dataclass
class Score:
    value: float
    low: float
    high: float
    n: int  # questions, or windows for a perplexity
    kind: str  # "accuracy" or "perplexity"
    correct: int | None = None
    note: str = ""

    @classmethod
    def accuracy(cls, correct: int, n: int, *, chance: float | None = None) -> Score:
        low, high = wilson_interval(correct, n)
        note = ""
        if chance is not None and low <= chance <= high:
            note = f"at chance ({chance:g} is inside the interval)"
        return cls(correct / n if n else 0.0, low, high, n, "accuracy", correct, note)


@dataclasses.dataclass
class KickResult:
    model: str
    fingerprint: str
    protocol: dict[str, Any]
    scores: dict[str, Score]
    sections: dict[str, dict[str, dict[str, int]]]  # per factoid mode: {section: counts}
    mmlu_blocks: dict[str, int]  # {"found", "parsed", "skipped"}
    items: dict[str, list[dict]]  # per question: what the model answered
    seconds: dict[str, float]
    versions: dict[str, str]
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KickResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["scores"] = {k: Score(**v) for k, v in data["scores"].items()}
        return cls(**values)


def run_kick_suite(loaded: LoadedModel, protocol: KickProtocol, *, fingerprint: str,
                   device: str = "cpu", progress: Progress | None = None) -> KickResult:
    """Run every task of the suite on `loaded` (its module stays where it is put)."""
    model, tokenizer = loaded.module.to(device), loaded.tokenizer
    seconds: dict[str, float] = {}
    scores: dict[str, Score] = {}
    items: dict[str, list[dict]] = {}
    sections: dict[str, dict[str, dict[str, int]]] = {}
    pool = factoid_questions()
    asked = spread_sample(pool, lambda q: q.section, protocol.questions, protocol.seed)
    for mode in ("closed_book", "open_book"):
        start = time.perf_counter()
        outcome = run_factoid(model, tokenizer, asked, mode=mode, pool=pool,
                              seed=protocol.seed, max_new_tokens=protocol.max_new_tokens,
                              batch_size=protocol.batch_size, device=device,
                              progress=_stage(progress, f"kick {mode.replace('_', '-')}"))
        seconds[f"factoid_{mode}"] = time.perf_counter() - start
        _record_factoid(outcome, scores, items, sections)
    start = time.perf_counter()
    dev = load_mmlu_dev()
    mmlu_asked = spread_sample(dev.questions, lambda q: q.subject, protocol.mmlu_questions,
                               protocol.seed)
    mmlu = run_mmlu(model, tokenizer, mmlu_asked, device=device,
                    progress=_stage(progress, "kick mmlu"))
    seconds["mmlu"] = time.perf_counter() - start
    scores["mmlu"] = Score.accuracy(mmlu.correct, len(mmlu.items), chance=CHANCE)
    items["mmlu"] = mmlu.items
    start = time.perf_counter()
    scores.update(_perplexity_scores(loaded, protocol, device, progress))
    seconds["perplexity"] = time.perf_counter() - start
    return KickResult(
        model=loaded.source, fingerprint=fingerprint, protocol=protocol.to_dict(),
        scores=scores, sections=sections,
        mmlu_blocks={"found": dev.blocks, "parsed": len(dev.questions),
                     "skipped": dev.skipped},
        items=items, seconds=seconds,
        versions={**library_versions(), "threads": str(torch.get_num_threads()),
                  "device": device},
        created=timestamp())


def _record_factoid(outcome: FactoidOutcome, scores: dict[str, Score],
                    items: dict[str, list[dict]],
                    sections: dict[str, dict[str, dict[str, int]]]) -> None:
    name = f"factoid_{outcome.mode}"
    scores[name] = Score.accuracy(outcome.correct, len(outcome.items))
    items[name] = outcome.items
    sections[name] = outcome.by_section()


def _perplexity_scores(loaded: LoadedModel, protocol: KickProtocol, device: str,
                       progress: Progress | None) -> dict[str, Score]:
    """`toolkit eval`'s perplexities, each with a bootstrap interval over its windows."""
    scores = {}
    for stream, result in evaluate_perplexities(loaded.module, cached_streams(loaded.tokenizer),
                                                protocol.perplexity, device=device,
                                                progress=progress).items():
        low, high = bootstrap_ppl_interval(result.window_nll, seed=protocol.seed,
                                           samples=protocol.bootstrap_samples)
        scores[f"ppl_{stream}"] = Score(result.ppl, low, high, result.windows, "perplexity")
    return scores


def _stage(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)
