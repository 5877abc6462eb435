"""Evaluation: perplexity on the built-in Wikipedia and news streams (same protocol
for `compress`'s before/after table and for `toolkit eval`)."""

from toolkit.eval.perplexity import PerplexityResult, perplexity
from toolkit.eval.protocol import EvalProtocol, evaluate_perplexities

__all__ = ["EvalProtocol", "PerplexityResult", "evaluate_perplexities", "perplexity"]
