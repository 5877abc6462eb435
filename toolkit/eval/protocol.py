"""The evaluation protocol shared by `compress` (before/after) and `eval`: the same
windows of the same streams, so `toolkit eval DIR` reproduces what `compress` reported."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from toolkit.data import TokenStreams, eval_windows
from toolkit.eval.perplexity import PerplexityResult, perplexity

DEFAULT_EVAL_WINDOWS = 16  # per stream; evenly spread; `all` for the benchmark
DEFAULT_EVAL_SEQ_LEN = 512
STREAMS = ("wikipedia", "news")


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    seq_len: int = DEFAULT_EVAL_SEQ_LEN
    # Windows per stream, evenly spaced over the stream; None = every window.
    windows: int | None = DEFAULT_EVAL_WINDOWS

    def to_dict(self) -> dict:
        return {"seq_len": self.seq_len, "windows": self.windows if self.windows else "all"}

    @classmethod
    def from_dict(cls, data: dict) -> EvalProtocol:
        windows = data.get("windows", DEFAULT_EVAL_WINDOWS)
        seq_len = int(data.get("seq_len", DEFAULT_EVAL_SEQ_LEN))
        return cls(seq_len, None if windows == "all" else int(windows))


def evaluate_perplexities(model: nn.Module, streams: TokenStreams, protocol: EvalProtocol,
                          *, device: str = "cpu", batch_size: int = 1,
                          progress: Callable[[str, int, int], None] | None = None,
                          ) -> dict[str, PerplexityResult]:
    """Perplexity on the Wikipedia held-out stream and on the news stream; `progress`
    gets stages named "eval wikipedia" and "eval news"."""
    results = {}
    for name, stream in (("wikipedia", streams.wiki_eval), ("news", streams.news_eval)):
        windows = eval_windows(stream, protocol.seq_len, protocol.windows)
        tick = (lambda done, total, _n=f"eval {name}": progress(_n, done, total)
                ) if progress else None
        results[name] = perplexity(model, windows, batch_size=batch_size, device=device,
                                   progress=tick)
    return results
