"""Thread control for the Hessian-based methods (SparseGPT, GPTQ): tiny per-column ops on
one thread, large factorisations on all of them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run a loop of tiny tensor ops on one thread, then restore the thread count.

    GPTQ's and SparseGPT's per-column updates touch one [out] vector at a time; with
    several intra-op threads each op pays a fork/join that costs more than the work, and
    far more when another process holds a core (measured on a 2-core machine: GPTQ on a
    576 x 1536 layer took 1.2 s on one thread and 16 s on two)."""
    threads = torch.get_num_threads()
    _outer_threads.append(threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        _outer_threads.pop()
        torch.set_num_threads(threads)


# The thread counts that `single_threaded` replaced, innermost last.
_outer_threads: list[int] = []


@contextlib.contextmanager
def all_threads() -> Iterator[None]:
    """Inside `single_threaded`, give one large dense operation (a Cholesky factorisation
    of a 4096 x 4096 Hessian, say) back the threads the caller had: it is big enough for
    the fork/join to pay off. Outside `single_threaded` it changes nothing."""
    if not _outer_threads:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(_outer_threads[0])
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# Below this many updated weights the lazy batch update stays on one thread (measured:
# a 576-wide layer's update is faster single-threaded; a 3072 x 8032 one ~1.8x faster on
# two threads).
LAZY_UPDATE_PARALLEL_MIN = 1 << 21


def lazy_update_threads(w, start: int):
    """The threads for GPTQ's / SparseGPT's block update of columns `start:` of `w`: all of
    them when the update is large, else the current (single) thread."""
    if w.shape[0] * (w.shape[1] - start) >= LAZY_UPDATE_PARALLEL_MIN:
        return all_threads()
    return contextlib.nullcontext()
