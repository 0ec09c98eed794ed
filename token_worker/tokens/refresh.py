"""Refresh-ahead's queue: at most one background refresh per key, on threads of its own.

A cache hit past its entry's refresh point asks :class:`RefreshQueue` for a refresh; the
valid token keeps being served meanwhile. The refresh runs on the queue's two threads,
never on the request pool, so refreshes cannot crowd out requests, and a key already
queued (or being fetched) is not queued again. What a refresh does when it starts (take
the key's flight, ask the fleet's lease holder or the IdP) is the broker's
(:meth:`~token_worker.tokens.broker.TokenBroker._refresh`); the queue also runs the
broker's other background chores (refilling a bucket that was made again).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from token_worker.tokens.cache import CacheKey
from token_worker.tokens.model import TokenQuery

__all__ = ["RefreshQueue"]

THREADS = 2
"""Threads the refreshes run on (a refresh is one IdP call, rarely more than a few due)."""


class RefreshQueue:
    """Queues ``run(key, query)`` once per key on ``executor`` (two threads of its own by
    default; tests pass one that runs tasks when they say)."""

    def __init__(self, run: Callable[[CacheKey, TokenQuery], None],
                 executor: Executor | None = None) -> None:
        self._run = run
        self._executor = executor or ThreadPoolExecutor(max_workers=THREADS,
                                                        thread_name_prefix="refresh")
        self._lock = threading.Lock()
        self._queued: set[CacheKey] = set()
        self.count = 0
        """Refreshes queued so far."""

    def queue(self, key: CacheKey, query: TokenQuery) -> bool:
        """Queue a refresh of ``key`` unless one is queued; False when none was queued."""
        with self._lock:
            if key in self._queued:
                return False
            self._queued.add(key)
        try:
            self._executor.submit(self._start, key, query)
        except RuntimeError:  # shutting down
            with self._lock:
                self._queued.discard(key)
            return False
        self.count += 1
        return True

    def run_in_background(self, chore: Callable[[], None]) -> None:
        """Run ``chore`` on the queue's threads (nothing, once closed)."""
        with contextlib.suppress(RuntimeError):  # shutting down
            self._executor.submit(chore)

    def close(self) -> None:
        """Drop what is queued; a refresh running finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start(self, key: CacheKey, query: TokenQuery) -> None:
        with self._lock:
            self._queued.discard(key)
        self._run(key, query)
