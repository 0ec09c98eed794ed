"""Callbacks at a later moment, for many waits at once, on one thread.

A wait that holds no thread (a request waiting for another replica's token) still needs
an end: :class:`Timers` runs each callback when its moment comes, on one daemon thread,
with the standard library's :mod:`sched` keeping the order. A new, earlier moment wakes
the thread at once. Callbacks must be short (they hand work on); one that raises is
logged and the others still run.
"""

from __future__ import annotations

import contextlib
import logging
import sched
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Cancellable", "Timer", "TimerService", "Timers"]

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class TimerService(Protocol):
    """What a waiter needs of timers (:class:`Timers`, or a hand-moved fake in tests)."""

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable: ...


class Timer:
    """A scheduled callback; :meth:`cancel` stops it if it has not run."""

    __slots__ = ("_event", "_timers")

    def __init__(self, timers: Timers, event: sched.Event) -> None:
        self._timers = timers
        self._event = event

    def cancel(self) -> None:
        self._timers._cancel(self._event)


class Timers:
    """One thread that runs callbacks at ``time.monotonic()`` moments (or ``clock``'s)."""

    def __init__(self, *, name: str = "timers",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._wake = threading.Event()
        self._closed = False
        self._scheduler = sched.scheduler(clock, self._sleep)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` at ``when`` (at once if that has passed)."""
        event = self._scheduler.enterabs(when, 0, _safely, (callback,))
        self._wake.set()
        return Timer(self, event)

    def close(self) -> None:
        """Stop the thread; callbacks not run yet never run."""
        self._closed = True
        for event in self._scheduler.queue:
            self._cancel(event)
        self._wake.set()

    def _cancel(self, event: sched.Event) -> None:
        with contextlib.suppress(ValueError):  # it ran (or was cancelled) already
            self._scheduler.cancel(event)

    def _sleep(self, seconds: float) -> None:
        """sched's delay: woken early by a new moment (sched then looks at its queue
        again); a spurious wake-up costs one look."""
        self._wake.wait(seconds)
        self._wake.clear()

    def _run(self) -> None:
        while not self._closed:
            self._scheduler.run()
            self._wake.wait()
            self._wake.clear()


def _safely(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("timer callback failed")
