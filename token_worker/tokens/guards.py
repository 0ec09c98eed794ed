"""What keeps one client's traffic from costing the others: per-key back-off, remembered
refusals and call budgets, each bounded in memory and consulted without I/O.

- :class:`Backoffs`: after a fetch for a key failed (its 5xx, its timeout), that key is
  not sent to the IdP again for a jittered, doubling pause (at least the ``Retry-After``
  the IdP asked for); its requests are answered at once with the failure meanwhile.
- :class:`Refusals`: an ``invalid_client``, ``unauthorized_client`` or ``invalid_scope``
  answer is kept for a short time and given again from memory, so a wrong secret asked
  a thousand times is one IdP call, not a brute-force lockout at the IdP.
- :class:`Budgets`: a token bucket per key (a client id, a credential, a token endpoint):
  ``burst`` calls at once, then ``rate`` per second.
- :class:`Known`: the keys that have been seen to succeed (a secret that obtained a
  token), so they can be kept apart from those that have not.

Every table is bounded (least recently used go first), so a flood of distinct keys costs
bounded memory; its worst effect is to forget a key's state early. Time and randomness are
injected, so the rules are tested without sleeping. The token bucket is three lines of
arithmetic; the rate-limit packages on PyPI bring storage back-ends, windows and async
variants this needs none of, and none has a bounded keyed table with an injectable clock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K", bound=Hashable)
E = TypeVar("E")

REMEMBERED_CODES = frozenset({"invalid_client", "unauthorized_client", "invalid_scope"})
"""The OAuth2 refusals that asking again cannot change within seconds."""


@dataclass(frozen=True)
class Held(Generic[E]):
    """A key held back: the error that holds it and the seconds until it is asked again."""

    error: E
    retry_after: float
    failures: int = 1


class Backoffs(Generic[K, E]):
    """Per-key back-off after failed fetches: full jitter over a doubling ceiling, from
    ``first`` up to ``longest`` seconds, never shorter than a ``Retry-After``."""

    def __init__(self, *, first: float, longest: float, capacity: int,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[float, float], float] = random.uniform) -> None:
        self._first = first
        self._longest = longest
        self._clock = clock
        self._rng = rng
        self._held: LRUCache[K, tuple[float, E, int, float]] = LRUCache(capacity)
        """Key -> (held until, its error, its failures, the ceiling of its last pause)."""
        self._lock = threading.Lock()

    def failed(self, key: K, error: E, retry_after: float | None = None) -> float:
        """Hold ``key`` back after a failed fetch; returns the seconds it is held."""
        now = self._clock()
        with self._lock:
            held = self._held.get(key)
            failures = 1 if held is None else held[2] + 1
            # the last ceiling doubled: it reaches the longest from any first pause, and
            # stays finite however many the failures (a power of two would need a cap)
            ceiling = min(self._longest, self._first if held is None else 2 * held[3])
            pause = max(self._rng(ceiling / 2, ceiling), retry_after or 0.0)
            self._held[key] = (now + pause, error, failures, ceiling)
        return pause

    def succeeded(self, key: K) -> None:
        """A fetch for ``key`` got its token: nothing holds it any more."""
        if self._held:
            with self._lock:
                self._held.pop(key, None)

    def held(self, key: K) -> Held[E] | None:
        """Why ``key`` may not be asked for now, or None."""
        if not self._held:
            return None
        with self._lock:
            entry = self._held.get(key)
        if entry is None:
            return None
        left = entry[0] - self._clock()
        return Held(entry[1], left, entry[2]) if left > 0 else None

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for until, *_ in self._held.values() if until > self._clock())


class Refusals(Generic[K, E]):
    """Refusals kept for ``ttl`` seconds per key; ``tag`` (a credential name) lets a
    rotation forget them at once."""

    def __init__(self, *, ttl: float, capacity: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._kept: LRUCache[K, tuple[float, E, str | None]] = LRUCache(capacity)
        self._lock = threading.Lock()

    def remember(self, key: K, error: E, *, tag: str | None = None) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._kept[key] = (self._clock() + self._ttl, error, tag)

    def recall(self, key: K) -> Held[E] | None:
        """The refusal kept for ``key`` and the seconds it is still kept, or None."""
        if not self._kept:
            return None
        with self._lock:
            entry = self._kept.get(key)
        if entry is None:
            return None
        left = entry[0] - self._clock()
        return Held(entry[1], left) if left > 0 else None

    def forget(self, tag: str) -> int:
        """Drop every refusal kept under ``tag``; how many."""
        with self._lock:
            keys = [key for key, (_, _, kept_tag) in self._kept.items() if kept_tag == tag]
            for key in keys:
                del self._kept[key]
        return len(keys)

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for until, _, _ in self._kept.values() if until > self._clock())


class Budgets(Generic[K]):
    """A token bucket per key: ``burst`` calls at once, refilled at ``rate`` per second."""

    def __init__(self, *, rate: float, burst: float, capacity: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a budget needs a rate above 0 and a burst of at least 1")
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: LRUCache[K, tuple[float, float]] = LRUCache(capacity)
        """Key -> (tokens, when counted)."""
        self._lock = threading.Lock()

    def take(self, key: K) -> float:
        """Spend one call of ``key``'s budget: 0.0 when granted, else the seconds until
        one is available again (nothing spent)."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - stamp) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate

    def give_back(self, key: K) -> None:
        """Return a call that was not made after all (the shared tier had the token)."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - stamp) * self._rate + 1.0)
            self._buckets[key] = (tokens, now)


class Known(Generic[K]):
    """A bounded set of keys, the least recently seen forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._keys: LRUCache[K, None] = LRUCache(capacity)
        self._lock = threading.Lock()

    def add(self, key: K) -> None:
        with self._lock:
            self._keys[key] = None

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
