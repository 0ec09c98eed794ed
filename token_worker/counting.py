"""Counters each thread writes without a lock, summed when somebody reads them.

Every reply is counted several times over (its outcome, its latency bucket, its endpoint's
``$SRV.STATS``, a cache hit), and most replies are cache hits answered on the reader
thread in a few microseconds: a lock per count (as ``prometheus_client`` takes in
``Counter.inc`` and ``Histogram.observe``) was a measurable share of that. Here each thread
gets its own list of numbers on first use and is the only one to write it; a reader (a
scrape, ``$SRV.STATS``) adds the lists up. A count is written before its reply is sent, so
whoever reads after getting a reply sees it counted: the values are exact, not sampled.

Reading an element while its thread writes it is safe under the GIL (a list item is
replaced whole); a read may see one thread's counts from a moment earlier than another's,
which is what any scrape of a live process sees.
"""

from __future__ import annotations

import threading

__all__ = ["ThreadCounts"]


class ThreadCounts:
    """``size`` numbers, one list per thread (see the module docstring).

    The writer's idiom::

        values = counts.mine()
        values[OUTCOME] += 1
        values[SECONDS] += elapsed

    and on the hottest paths, without a call once the thread has counted::

        try:
            values = counts.local.values
        except AttributeError:
            values = counts.mine()
    """

    __slots__ = ("_every", "_lock", "_size", "local")

    def __init__(self, size: int) -> None:
        self._size = size
        self.local = threading.local()
        """``local.values`` is the calling thread's list, once :meth:`mine` has made it."""
        self._lock = threading.Lock()
        self._every: list[list[float]] = []
        """Every thread's list, kept after the thread ends (its counts still count)."""

    def mine(self) -> list[float]:
        """The calling thread's list, made on its first count."""
        try:
            values: list[float] = self.local.values
        except AttributeError:
            values = self.local.values = [0] * self._size
            with self._lock:
                self._every.append(values)
        return values

    def totals(self) -> list[float]:
        """Each number added up over every thread."""
        with self._lock:
            every = list(self._every)
        totals: list[float] = [0] * self._size
        for values in every:
            for index, value in enumerate(values):
                totals[index] += value
        return totals
