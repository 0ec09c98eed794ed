"""What a requester does after an attempt failed: the outcomes, and the pause before the next.

Retries follow what happened: "no worker subscribed" (the server's 503) is retried with
back-off for as long as one attempt may wait for an answer (``timeout``, within the budget:
a worker restart is bridged, a fleet that is gone is reported without using the whole
budget); a lost NATS connection is retried with back-off for the whole budget; an attempt
that got no answer counts against ``retries`` and is tried again at once when a forged
reply was dropped (the genuine one may have gone to a rogue). A worker that turns the
request away answers at once, so it is asked again within the budget: ``shutting_down``
(that worker stops; another replica answers) at once, ``overloaded`` after a short
jittered back-off; neither counts against ``retries``.

The outcomes are internal: :func:`final_error` turns the last one into a public
:class:`~token_worker.errors.TokenRequestFailed`. Both requesters run their attempts with
tenacity under one :class:`Course` (the threaded one with ``Retrying``, the asyncio one with
``AsyncRetrying``), so they retry alike.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, retry_if_exception_type

from token_worker.errors import (
    NatsUnavailable,
    NoWorkerAnswered,
    RequestTimedOut,
    TokenRequestFailed,
)
from token_worker.wire import OVERLOADED, SHUTTING_DOWN

BACKOFF_FIRST = 0.05
"""First pause before asking again when no worker is subscribed or NATS is away."""
BACKOFF_MAX = 1.0
"""Longest pause between such attempts (they go on for the whole budget)."""
LAST_ATTEMPT = 0.05
"""Seconds kept at the end of a call's budget for a last attempt that is answered at once
(a 503, a worker turning the request away): the last back-off is cut to leave them."""


class AttemptFailed(Exception):
    """An attempt ended without a believable reply."""


class NoResponders(AttemptFailed):
    """The server said nobody is subscribed (retried with back-off for one ``timeout``)."""


class ConnectionLost(AttemptFailed):
    """NATS is away (retried with back-off for the whole budget)."""


class Unanswered(AttemptFailed):
    """No genuine reply within the attempt's timeout (counts against ``retries``)."""

    def __init__(self, message: str, *, dropped: int) -> None:
        self.dropped = dropped
        """Replies dropped as not genuine during the attempt: retry at once."""
        super().__init__(message)


class TurnedAway(AttemptFailed):
    """A genuine worker answered that it did not serve the request: ask again. ``reply`` is
    that answer, handed to the caller when no further attempt fits the budget."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        super().__init__(f"worker answered {reply.get('error_code')}: {reply.get('error')}")


class ShuttingDown(TurnedAway):
    """The worker stops and did not start the request: another replica answers, at once."""


class Overloaded(TurnedAway):
    """Every handler of the worker was busy: ask again after a short jittered back-off."""


class BudgetSpent(Exception):
    """No time is left for another attempt (the previous outcome says why)."""


class RetryPolicy:
    """What one call does after an attempt failed: the pause before the next attempt, or
    None when the call ends.

    An attempt with no answer counts against ``retries`` (tried again at once when a forged
    reply was dropped). "No worker subscribed" and a lost connection cost nothing and are
    retried with exponential back-off (jittered, at most ``BACKOFF_MAX``, each on its own);
    "no worker" for at most ``timeout`` from the first such answer, a lost connection for
    the whole budget (a reconnect ends its pause early). A worker turning the request away
    is asked again for the whole budget: ``shutting_down`` at once the first time (then with
    back-off, should every replica be stopping), ``overloaded`` with back-off.
    ``retries=0``: nothing is retried.
    """

    def __init__(self, retries: int, timeout: float) -> None:
        self._retries = retries
        self._timeout = timeout
        self._unanswered = 0
        self._pauses: dict[type[AttemptFailed], float] = {}
        self._nobody_since = 0.0

    def pause_after(self, outcome: AttemptFailed) -> float | None:
        """Seconds to wait before the next attempt, or None: no further attempt."""
        if self._retries == 0:
            return None
        if isinstance(outcome, (Unanswered, TurnedAway)):
            self._nobody_since = 0.0  # someone is subscribed: a later 503 starts afresh
            self._pauses.pop(NoResponders, None)
        if isinstance(outcome, Unanswered):
            self._unanswered += 1
            if self._unanswered > self._retries:
                return None
            return 0.0 if outcome.dropped else random.uniform(0, BACKOFF_FIRST)  # noqa: S311
        if isinstance(outcome, ShuttingDown) and ShuttingDown not in self._pauses:
            self._pauses[ShuttingDown] = BACKOFF_FIRST
            return 0.0
        pause = self._pauses.get(type(outcome), BACKOFF_FIRST)
        self._pauses[type(outcome)] = min(pause * 2, BACKOFF_MAX)
        delay = random.uniform(pause / 2, pause)  # noqa: S311 - jitter only
        if isinstance(outcome, NoResponders):
            return self._within_nobody_window(delay)
        return delay

    def _within_nobody_window(self, delay: float) -> float | None:
        """"No worker" is asked again for one ``timeout`` from its first answer: the pause,
        cut so the last attempt comes at the window's end, or None once it is spent."""
        now = time.monotonic()
        self._nobody_since = self._nobody_since or now
        left = self._nobody_since + self._timeout - now
        return min(delay, left) if left > 0 else None


@dataclass(frozen=True)
class Call:
    """One request: what is sent where, and its time budget."""

    subject: str
    payload: bytes
    request_id: str
    credential: str | None
    started: float
    """``time.monotonic()`` when the call began."""
    budget: float
    headers: Mapping[str, str] | None = None
    """NATS headers sent with every attempt (the trace context), or None."""

    def remaining(self) -> float:
        return self.started + self.budget - time.monotonic()


class Course:
    """How one call is going: the last failed outcome and the policy's verdict on it, as
    tenacity's ``wait`` (:meth:`pause`) and ``stop`` (:meth:`ends`)."""

    def __init__(self, policy: RetryPolicy, call: Call) -> None:
        self._policy = policy
        self._call = call
        self.failure: AttemptFailed = Unanswered("time budget spent", dropped=0)
        """The last failed attempt's outcome (before any: the budget was spent)."""
        self._delay: float | None = None
        self.budget_spent = False
        """Whether the call ends because its budget is spent (not because it gave up)."""

    def pause(self, state: RetryCallState) -> float:
        """tenacity's wait: the policy's pause after the outcome just seen."""
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        assert isinstance(error, AttemptFailed)  # tenacity retries only these
        self.failure = error
        delay = self._policy.pause_after(error)
        room = self._call.remaining() - LAST_ATTEMPT
        if delay is not None and room > 0 and not isinstance(error, Unanswered):
            # an answer that comes at once (no worker, turned away, a lost connection) is
            # asked again for the whole budget: the last pause ends in time for one more
            delay = min(delay, room)
        self._delay = delay
        return delay or 0.0

    def retrying(self, check_open: Callable[[], None], sleep: Callable[[float], Any]
                 ) -> dict[str, Any]:
        """The arguments of tenacity's ``Retrying`` (or ``AsyncRetrying``, with an async
        ``sleep``) that run a call's attempts on this course."""
        return {"before": lambda _: check_open(),
                "retry": retry_if_exception_type(AttemptFailed), "wait": self.pause,
                "stop": self.ends, "sleep": sleep, "reraise": True}

    def outcome(self, error: Exception) -> dict[str, Any]:
        """What ends a call whose attempts raised ``error``: the reply of a worker that
        turned it away (its own answer says best why), or the error to raise."""
        if isinstance(error, BudgetSpent):  # no time for another attempt: the last says why
            if isinstance(self.failure, TurnedAway):
                return self.failure.reply
            raise final_error(self._call, self.failure, budget_spent=True) from None
        if isinstance(error, TurnedAway):  # no attempt fits the budget, or retries=0
            return error.reply
        raise final_error(self._call, self.failure, budget_spent=self.budget_spent) from None

    def ends(self, _state: RetryCallState) -> bool:
        """tenacity's stop: the policy gave up, or the pause would outlast the budget."""
        remaining = self._call.remaining()
        if self._delay is None:
            self.budget_spent = remaining <= 0
            return True
        self.budget_spent = remaining <= self._delay
        return self.budget_spent


def turned_away(reply: dict[str, Any]) -> bool:
    """Whether a genuine reply turns the request away (``shutting_down``, ``overloaded``)."""
    return bool(reply.get("error")) and reply.get("error_code") in (SHUTTING_DOWN, OVERLOADED)


def unless_turned_away(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply, unless the worker turned the request away (``shutting_down``,
    ``overloaded``): then the attempt failed, and the policy asks again."""
    if reply.get("error"):
        code = reply.get("error_code")
        if code == SHUTTING_DOWN:
            raise ShuttingDown(reply)
        if code == OVERLOADED:
            raise Overloaded(reply)
    return reply


def final_error(call: Call, failure: AttemptFailed, *, budget_spent: bool
                ) -> TokenRequestFailed:
    """The public error a call ends with, after ``failure`` (its last attempt's outcome)."""
    spent = time.monotonic() - call.started
    if isinstance(failure, NoResponders):
        return NoWorkerAnswered(f"no worker is subscribed to {call.subject} "
                                f"(asked for {spent:.2f} s)", request_id=call.request_id)
    if isinstance(failure, ConnectionLost):
        return NatsUnavailable(f"{failure}; not back within {spent:.2f} s",
                               request_id=call.request_id)
    if budget_spent:
        return RequestTimedOut(f"no reply within the {call.budget:g} s budget ({failure})",
                               request_id=call.request_id)
    return NoWorkerAnswered(str(failure), request_id=call.request_id)
