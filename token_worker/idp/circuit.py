"""The token endpoint's circuit: it opens only on evidence that the endpoint itself fails.

A client-credentials endpoint serves many clients, and one client's bad day (its secret
revoked, a realm rule that answers it 500, a call that hangs for it alone) says nothing
about the others. A classic breaker counts consecutive failures whoever caused them, so
one noisy client shuts every client out; this one asks for evidence about the endpoint:

- failures (5xx, timeouts that had the whole ``idp.timeout``) for ``threshold`` *distinct*
  clients within ``window`` seconds, with no success in between; or
- ``threshold`` failures to reach the endpoint at all (connection refused or reset, DNS,
  TLS, connect timeouts) within ``window``, whoever asked: those are about the endpoint.

Open, nobody is asked for ``cool_down`` seconds (longer if the failures carried a longer
``Retry-After``, at most :data:`LONGEST_OPEN`). Then half-open: up to ``probes`` calls go
through at once; the first that gets any answer from the endpoint closes the circuit (a
4xx is an answer: the endpoint works), and it opens again only when every probe failed.
So one client's request per cool-down can never keep it open.

Why not the ``circuitbreaker`` or ``pybreaker`` packages: both count failures without
asking whose they are, and let exactly one call through half-open; evidence by distinct
clients is the point here. Time is injected (``clock``), so the rules are tested without
sleeping.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CircuitState", "EndpointCircuit", "Verdict"]

LONGEST_OPEN = 300.0
"""Longest the circuit stays open, whatever ``Retry-After`` the failures asked for."""
HALF_OPEN_WAIT = 1.0
"""What a request refused while every half-open probe is under way is told to wait."""


class CircuitState(enum.Enum):
    """Whether the endpoint is asked."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class Verdict:
    """Why a call may not go out now: ``retry_after`` seconds until the endpoint is asked
    again, and the evidence that opened the circuit, for the reply's sentence."""

    retry_after: float
    evidence: str


class EndpointCircuit:
    """One token endpoint's circuit; thread-safe, cheap enough for the reader thread."""

    def __init__(self, *, threshold: int, window: float, cool_down: float, probes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1 or probes < 1:
            raise ValueError("threshold and probes must be at least 1")
        self._threshold = threshold
        self._window = window
        self._cool_down = cool_down
        self._probes = probes
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failing: dict[str, float] = {}
        """Client -> when its last failure counted (closed state, within the window)."""
        self._unreachable: deque[float] = deque()
        """When each recent failure to reach the endpoint happened."""
        self._asked_wait = 0.0
        """The longest Retry-After among the failures counted since the last success."""
        self._open_until = 0.0
        self._evidence = ""
        self._probing = 0
        """Half-open: probes under way."""
        self._probes_failed = 0
        self.openings = 0
        """Times the circuit opened."""

    @property
    def state(self) -> CircuitState:
        """The state now (an open circuit whose cool-down is over reads as half-open)."""
        with self._lock:
            return self._current()

    def refusal(self) -> Verdict | None:
        """A :class:`Verdict` while no call may go out (open, or half-open with every probe
        slot taken), else None. Takes no probe slot: for a check before any work."""
        with self._lock:
            state = self._current()
            if state is CircuitState.CLOSED:
                return None
            if state is CircuitState.HALF_OPEN and self._probing < self._probes:
                return None
            return self._verdict()

    def acquire(self) -> Verdict | bool:
        """Ask to make one call: False means go (closed), True means go as a half-open
        probe (report its outcome with ``probe=True``), a :class:`Verdict` means don't."""
        with self._lock:
            state = self._current()
            if state is CircuitState.CLOSED:
                return False
            if state is CircuitState.HALF_OPEN and self._probing < self._probes:
                self._probing += 1
                return True
            return self._verdict()

    def answered(self) -> None:
        """The endpoint answered (a token, or a refusal: it works): close, forget. A probe's
        slot needs no giving back: the slots are counted afresh each time it half-opens."""
        with self._lock:
            self._close()

    def no_evidence(self, *, probe: bool = False) -> None:
        """A call ended saying nothing about the endpoint (cut short by the request's own
        deadline, a 429 for one client): only its probe slot, if any, is given back."""
        if probe:
            with self._lock:
                self._probing = max(0, self._probing - 1)

    def failed(self, client: str, *, unreachable: bool, retry_after: float | None = None,
               probe: bool = False) -> bool:
        """A failure: ``unreachable`` when the endpoint could not be reached at all (it
        counts whoever asked), else a failure for ``client``. True if this opened it."""
        now = self._clock()
        with self._lock:
            if retry_after:
                self._asked_wait = max(self._asked_wait, retry_after)
            if probe:
                self._probing = max(0, self._probing - 1)
                self._probes_failed += 1
                if self._probes_failed >= self._probes:
                    self._open(now, f"{self._probes} probes failed after the cool-down")
                    return True
                return False
            if self._current() is not CircuitState.CLOSED:
                return False
            return self._count(now, client, unreachable)

    def _count(self, now: float, client: str, unreachable: bool) -> bool:
        horizon = now - self._window
        if unreachable:
            self._unreachable.append(now)
            while self._unreachable and self._unreachable[0] < horizon:
                self._unreachable.popleft()
            if len(self._unreachable) >= self._threshold:
                self._open(now, f"{len(self._unreachable)} failures to reach it in "
                                f"{self._window:g} s")
                return True
            return False
        self._failing[client] = now
        if len(self._failing) >= self._threshold:
            self._failing = {c: t for c, t in self._failing.items() if t >= horizon}
            if len(self._failing) >= self._threshold:
                self._open(now, f"failures for {len(self._failing)} different clients in "
                                f"{self._window:g} s")
                return True
        return False

    def _current(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() >= self._open_until:
            self._state = CircuitState.HALF_OPEN
            self._probing = self._probes_failed = 0
        return self._state

    def _open(self, now: float, evidence: str) -> None:
        self._state = CircuitState.OPEN
        self._open_until = now + min(max(self._cool_down, self._asked_wait), LONGEST_OPEN)
        self._evidence = evidence
        self._failing.clear()
        self._unreachable.clear()
        self._asked_wait = 0.0
        self.openings += 1

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._failing.clear()
        self._unreachable.clear()
        self._asked_wait = 0.0
        self._probes_failed = 0

    def _verdict(self) -> Verdict:
        if self._state is CircuitState.HALF_OPEN:  # every probe slot taken: ask in a moment
            return Verdict(HALF_OPEN_WAIT, f"{self._evidence}; probing after the cool-down")
        return Verdict(max(0.0, self._open_until - self._clock()), self._evidence)
