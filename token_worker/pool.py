"""A thread pool with a bounded backlog, so a flood costs bounded memory.

:class:`concurrent.futures.ThreadPoolExecutor` queues without limit. This wrapper admits at
most ``workers + backlog`` tasks at a time: :meth:`BoundedPool.try_submit` says no at once
when full (the caller answers ``overloaded``), and :meth:`BoundedPool.wait_idle` lets a
drain wait for the tasks in flight, with a timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class BoundedPool:
    """``workers`` threads and at most ``backlog`` waiting tasks."""

    def __init__(self, workers: int, backlog: int, *, name: str = "token-worker") -> None:
        self.capacity = workers + backlog
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._admitted = 0
        self._idle = threading.Condition()

    @property
    def admitted(self) -> int:
        """Tasks running or waiting."""
        return self._admitted

    def try_submit(self, task: Callable[[], None]) -> bool:
        """Run ``task`` on a pool thread; False (and nothing queued) when the pool is full."""
        with self._idle:
            if self._admitted >= self.capacity:
                return False
            self._admitted += 1
        try:
            future = self._executor.submit(task)
        except RuntimeError:  # shut down
            self._release(None)
            return False
        future.add_done_callback(self._release)
        return True

    def _release(self, future: Future[None] | None) -> None:
        if future is not None and not future.cancelled() and future.exception() is not None:
            log.error("task failed", exc_info=future.exception())
        with self._idle:
            self._admitted -= 1
            if self._admitted == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no task is running or waiting; False if ``timeout`` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._admitted == 0, timeout)

    def shutdown(self) -> None:
        """Stop the threads; tasks not yet started are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)
