"""A thread pool with a bounded backlog, so a flood costs bounded memory, and a shutdown
that hands back what it never started.

:class:`concurrent.futures.ThreadPoolExecutor` queues without limit and, at shutdown, can
only cancel what is queued: the caller never learns which tasks those were, so their
requesters would wait out their timeouts. :class:`BoundedPool` admits at most ``workers +
backlog`` tasks at a time (:meth:`~BoundedPool.try_submit` says no at once when full, and
the caller answers ``overloaded``) and runs each on one of ``workers`` threads, started as
work arrives. At :meth:`~BoundedPool.close`, each task not started yet has its ``drop``
called instead of its ``run``, so whoever waits for it can be answered (``shutting_down``).

Only work that needs a thread comes here: IdP calls and shared-tier reads, or a handler's
deferred calls. A request waiting for a fetch already under way holds no task (see
:mod:`token_worker.tokens.flight`), so the pool's bound counts work, not waiters.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["BoundedPool", "Task"]

log = logging.getLogger(__name__)


class Task(NamedTuple):
    """Work for a thread, and what to do instead if it never runs."""

    run: Callable[[], None]
    drop: Callable[[], None]


class BoundedPool:
    """``workers`` threads running tasks, and at most ``backlog`` tasks waiting."""

    def __init__(self, workers: int, backlog: int, *, name: str = "token-worker") -> None:
        self.capacity = workers + backlog
        self.workers = workers
        self._name = name
        self._queue: deque[Task] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._admitted = 0
        self._waiting_threads = 0
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def admitted(self) -> int:
        """Tasks running or waiting."""
        return self._admitted

    @property
    def threads(self) -> int:
        """Threads started so far (at most ``workers``)."""
        return len(self._threads)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: nothing more is admitted."""
        return self._closed

    def try_submit(self, run: Callable[[], None], drop: Callable[[], None]) -> bool:
        """Queue ``run`` for a thread; False (nothing queued) when full or closed."""
        with self._lock:
            if self._closed or self._admitted >= self.capacity:
                return False
            self._admitted += 1
            self._queue.append(Task(run, drop))
            if len(self._queue) > self._waiting_threads and len(self._threads) < self.workers:
                self._start_thread()
            else:
                self._work.notify()
        return True

    def close(self) -> list[Task]:
        """Admit nothing more and return the tasks not started (removed from the queue:
        the caller drops them); running tasks finish, then the threads end. Safe to call
        more than once."""
        with self._lock:
            self._closed = True
            taken = list(self._queue)
            self._queue.clear()
            self._admitted -= len(taken)
            if self._admitted == 0:
                self._idle.notify_all()
            self._work.notify_all()
        return taken

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no task is running or waiting; False if ``timeout`` ran out first."""
        with self._lock:
            return self._idle.wait_for(lambda: self._admitted == 0, timeout)

    def _start_thread(self) -> None:
        """Start one more thread (call with the lock held)."""
        thread = threading.Thread(target=self._serve, daemon=True,
                                  name=f"{self._name}_{len(self._threads)}")
        self._threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._waiting_threads += 1
                    try:
                        self._work.wait()
                    finally:
                        self._waiting_threads -= 1
                if not self._queue:
                    return  # closed, nothing left
                task = self._queue.popleft()
            try:
                task.run()
            except Exception:
                log.exception("pool task failed")
            finally:
                with self._lock:
                    self._admitted -= 1
                    if self._admitted == 0:
                        self._idle.notify_all()
