"""Progress bars on the terminal (tqdm on stderr), silent with --quiet."""

from __future__ import annotations

from collections.abc import Callable

# The unit shown per stage; perplexity stages count windows.
STAGE_UNITS = {"prune": "block", "owl": "block", "load": "model", "timed runs": "round",
               "prefill runs": "round"}


class StageProgress:
    """A `(stage, done, total)` callback that keeps one tqdm bar per stage."""

    def __init__(self) -> None:
        self._bars: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            unit = STAGE_UNITS.get(stage, "window")
            bar = self._bars[stage] = tqdm(total=total, desc=stage, unit=unit, leave=True,
                                           dynamic_ncols=True)
        if bar.total != total:  # an estimate that grew (bench: runs until --min-seconds)
            bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self._bars[stage]  # the same stage may run again (eval before and after)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def make_progress(quiet: bool) -> Callable[[str, int, int], None] | None:
    return None if quiet else StageProgress()
