"""Blocking work from a stage handler: inline while it is quick, in a worker thread once it is not.

A thread hop costs more than a plan or a walk of a small cluster takes (the executor's queue, a
thread wake-up, the loop's wake-up, and with the GIL the hand-over back and forth), and buys no
parallelism for Python code. Measured on the shop snapshot: moving three sub-millisecond calls per
diagnosis inline took a batch from 71 to 120 diagnoses/s. A call that gets slow (a big cluster, a
first call that loads caches) moves to a thread, so the loop that also carries every stage's bus
traffic and heartbeats is never held for long; it comes back inline once it is quick again.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

INLINE_BELOW_S = 0.005  # a call whose recent average (CPU) is below this runs on the loop: no harm to heartbeats
WEIGHT = 0.2  # of the newest duration in the moving average


class Offload:
    """One kind of call (e.g. the topology's plan): `await offload(fn, *args)`."""

    def __init__(self, inline_below_s: float = INLINE_BELOW_S) -> None:
        self.inline_below_s = inline_below_s
        self.average_s: float | None = None  # unknown until the first call, which runs in a thread

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.average_s is not None and self.average_s < self.inline_below_s:
            return self._timed(fn, *args, **kwargs)
        return await asyncio.to_thread(functools.partial(self._timed, fn, *args, **kwargs))

    def _timed(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        # the calling thread's CPU time: what the call costs, not how long it waited for the GIL or a core
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.thread_time() - started
            self.average_s = took if self.average_s is None else (1 - WEIGHT) * self.average_s + WEIGHT * took
