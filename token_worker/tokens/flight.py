"""A fetch under way for one key on this replica, and everyone waiting for it.

The first request that misses the cache for a key leads a :class:`Flight`: its work runs
on a pool thread (or waits, without one, for the replica that holds the fleet's lease on
the key). Every other request for that key joins the flight with a callback and holds no
thread and no pool slot: when the flight ends, each callback gets the same outcome, a
token or an error, on the thread that ended it. A flight takes at most ``max_waiters``;
the caller answers the next one itself (``overloaded``), so memory stays bounded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from token_worker import tracing

__all__ = ["Flight"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Flight(Generic[K, T]):
    """The outcome of one fetch, and the callbacks waiting for it."""

    __slots__ = ("_callbacks", "_error", "_lock", "_result", "_settled", "deadline", "key",
                 "max_waiters", "started", "trace")

    def __init__(self, key: K | None, *, started: float, deadline: float | None,
                 max_waiters: int) -> None:
        self.key: K | None = key
        """The cache key fetched for; None until the token endpoint is known (discovery)."""
        self.started = started
        """``time.monotonic()`` when the leading request arrived."""
        self.deadline = deadline
        """When the leading request's answer is due (``time.monotonic()``); None: none."""
        self.max_waiters = max_waiters
        self.trace = tracing.capture()
        """The leading request's trace context (None: tracing off), carried into the
        flight's work on other threads (:func:`token_worker.tracing.carried`)."""
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[T | None, BaseException | None], None]] = []
        self._settled = False
        self._result: T | None = None
        self._error: BaseException | None = None

    @property
    def waiting(self) -> int:
        """Callbacks waiting now."""
        return len(self._callbacks)

    @property
    def settled(self) -> bool:
        return self._settled

    def join(self, callback: Callable[[T | None, BaseException | None], None]) -> bool:
        """Wait for the outcome: ``callback(result, error)`` runs once, on the thread that
        settles the flight (at once, on this one, if it is settled). False, and nothing
        kept, when ``max_waiters`` already wait."""
        with self._lock:
            if not self._settled:
                if len(self._callbacks) >= self.max_waiters:
                    return False
                self._callbacks.append(callback)
                return True
        _call(callback, self._result, self._error)
        return True

    def take_callbacks(self) -> list[Callable[[T | None, BaseException | None], None]]:
        """Settle without an outcome and hand over the callbacks waiting (to join another
        flight for the same key with them); empty if it was settled already."""
        with self._lock:
            if self._settled:
                return []
            self._settled = True
            callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def succeed(self, result: T) -> bool:
        """Settle with a result; False if it was settled already."""
        return self._settle(result, None)

    def fail(self, error: BaseException) -> bool:
        """Settle with an error; False if it was settled already."""
        return self._settle(None, error)

    def _settle(self, result: T | None, error: BaseException | None) -> bool:
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            self._result, self._error = result, error
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback, result, error)
        return True


def _call(callback: Callable[[T | None, BaseException | None], None], result: T | None,
          error: BaseException | None) -> None:
    try:
        callback(result, error)
    except Exception:  # one waiter's failure must not cost the others their answer
        log.exception("a waiter's callback failed")
