"""A thread pool with a bounded backlog, so a flood costs bounded memory, and a shutdown
that hands back what it never started.

:class:`concurrent.futures.ThreadPoolExecutor` queues without limit and, at shutdown, can
only cancel what is queued: the caller never learns which items those were, so their
requesters would wait out their timeouts. :class:`BoundedPool` admits at most ``workers +
backlog`` items at a time (:meth:`~BoundedPool.try_submit` says no at once when full, and
the caller answers ``overloaded``), runs each with the function it was built with, and
:meth:`~BoundedPool.close` returns the items not started yet, so the caller can answer them
(``shutting_down``). Threads are started as work arrives, up to ``workers``.

It also knows which items are running: when the drain ends before they finish,
:meth:`~BoundedPool.take_running` hands them to the caller (who answers them
``shutting_down``), and :meth:`~BoundedPool.claim` tells the run function whether its item
is still its own to answer: exactly one of the two answers each item.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class BoundedPool(Generic[Item]):
    """``workers`` threads running ``run(item)``, and at most ``backlog`` waiting items."""

    def __init__(self, workers: int, backlog: int, run: Callable[[Item], None], *,
                 name: str = "token-worker") -> None:
        self.capacity = workers + backlog
        self._workers = workers
        self._run = run
        self._name = name
        self._queue: deque[Item] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._admitted = 0
        self._waiting_threads = 0
        self._threads: list[threading.Thread] = []
        self._running: dict[int, Item] = {}
        """Items a thread runs and nobody answered yet, by ``id``."""
        self._closed = False

    @property
    def admitted(self) -> int:
        """Items running or waiting."""
        return self._admitted

    @property
    def threads(self) -> int:
        """Threads started so far (at most ``workers``)."""
        return len(self._threads)

    def try_submit(self, item: Item) -> bool:
        """Queue ``item`` for a pool thread; False (nothing queued) when full or closed."""
        with self._lock:
            if self._closed or self._admitted >= self.capacity:
                return False
            self._admitted += 1
            self._queue.append(item)
            if len(self._queue) <= self._waiting_threads:
                self._work.notify()
            elif len(self._threads) < self._workers:
                self._start_thread()
            else:
                self._work.notify()
        return True

    def close(self) -> list[Item]:
        """Admit nothing more and return the items not started (removed from the queue);
        running items finish, then the threads end. Safe to call more than once."""
        with self._lock:
            self._closed = True
            taken = list(self._queue)
            self._queue.clear()
            self._admitted -= len(taken)
            if self._admitted == 0:
                self._idle.notify_all()
            self._work.notify_all()
        return taken

    def claim(self, item: Item) -> bool:
        """Called by ``run(item)`` before it answers: True if the item is still its own,
        False if :meth:`take_running` took it (it was answered: drop the late answer)."""
        with self._lock:
            return self._running.pop(id(item), None) is not None

    def take_running(self) -> list[Item]:
        """Take the items running and not claimed yet: the caller answers them now, and
        their run functions' :meth:`claim` says False."""
        with self._lock:
            taken = list(self._running.values())
            self._running.clear()
        return taken

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no item is running or waiting; False if ``timeout`` ran out first."""
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
                item = self._queue.popleft()
                self._running[id(item)] = item
            try:
                self._run(item)
            except Exception:
                log.exception("pool task failed")
            finally:
                with self._lock:
                    self._running.pop(id(item), None)
                    self._admitted -= 1
                    if self._admitted == 0:
                        self._idle.notify_all()
